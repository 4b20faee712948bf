"""Label and field selectors: Kubernetes syntax, validation, matching, and string round trips."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubevisor.apiserver.selectors import (
    EVERYTHING,
    FieldSelector,
    LabelSelector,
    Operator,
    Requirement,
    SelectorError,
    escape_field_value,
    label_selector_from_dict,
    parse_field_selector,
    parse_label_selector,
)

# --------------------------------------------------------------------------------------------------------
# Label selector parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a=b", [Requirement("a", Operator.EQUALS, ("b",))]),
        ("a==b", [Requirement("a", Operator.DOUBLE_EQUALS, ("b",))]),
        ("a!=b", [Requirement("a", Operator.NOT_EQUALS, ("b",))]),
        ("a in (b,c)", [Requirement("a", Operator.IN, ("b", "c"))]),
        ("a notin (b,c)", [Requirement("a", Operator.NOT_IN, ("b", "c"))]),
        ("a", [Requirement("a", Operator.EXISTS)]),
        ("!a", [Requirement("a", Operator.DOES_NOT_EXIST)]),
        ("a>5", [Requirement("a", Operator.GREATER_THAN, ("5",))]),
        ("a<5", [Requirement("a", Operator.LESS_THAN, ("5",))]),
        ("a=", [Requirement("a", Operator.EQUALS, ("",))]),
        ("a==", [Requirement("a", Operator.DOUBLE_EQUALS, ("",))]),
        ("a!=,b", [Requirement("a", Operator.NOT_EQUALS, ("",)), Requirement("b", Operator.EXISTS)]),
        ("a in ()", [Requirement("a", Operator.IN, ("",))]),
        ("a in (b,)", [Requirement("a", Operator.IN, ("b", ""))]),
        ("a in (,b)", [Requirement("a", Operator.IN, ("", "b"))]),
        ("a in (b,b,c)", [Requirement("a", Operator.IN, ("b", "c"))]),
        ("a=in", [Requirement("a", Operator.EQUALS, ("in",))]),
        ("a in (in,notin)", [Requirement("a", Operator.IN, ("in", "notin"))]),
        (
            "example.com/app.name=my-app_1.0",
            [Requirement("example.com/app.name", Operator.EQUALS, ("my-app_1.0",))],
        ),
        (
            "  env  in ( prod , qa ) ,  tier != front , ! legacy , gpu  ",
            [
                Requirement("env", Operator.IN, ("prod", "qa")),
                Requirement("tier", Operator.NOT_EQUALS, ("front",)),
                Requirement("legacy", Operator.DOES_NOT_EXIST),
                Requirement("gpu", Operator.EXISTS),
            ],
        ),
        (
            "a=b,a!=c",
            [Requirement("a", Operator.EQUALS, ("b",)), Requirement("a", Operator.NOT_EQUALS, ("c",))],
        ),
    ],
)
def test_parse_label_selector(text: str, expected: list[Requirement]) -> None:
    selector = parse_label_selector(text)
    assert selector == LabelSelector(tuple(expected))
    assert not selector.empty


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_an_empty_label_selector_selects_everything(text: str) -> None:
    selector = parse_label_selector(text)
    assert selector.empty
    assert selector == EVERYTHING
    assert selector.matches(None)
    assert selector.matches({"any": "thing"})
    assert str(selector) == ""


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("a=b,", "found end of string, expected: identifier after ','"),
        (",a", "found ',', expected: identifier"),
        ("a=b,,c=d", "found ',', expected: identifier after ','"),
        ("a in", "found end of string, expected: '('"),
        ("a in b", "found 'b', expected: '('"),
        ("a in (b", "found end of string, expected: identifier, ',' or ')'"),
        ("a in (b c)", "found 'c', expected: ',' or ')'"),
        ("a in (b=c)", "found '=', expected: identifier, ',' or ')'"),
        ("a notin", "expected: '('"),
        ("!a=b", "found '=', expected: ',' or 'end of string'"),
        ("!", "found end of string, expected: identifier"),
        ("!!a", "found '!', expected: identifier"),
        ("a b", "found 'b', expected: in, notin, =, ==, !=, >, <"),
        ("a=b c", "found 'c', expected: ',' or 'end of string'"),
        ("a=(b)", "found '(', expected: identifier"),
        ("=b", "found '=', expected: identifier"),
        ("in=b", "found 'in', expected: identifier"),
        ("a=b,in", "found 'in', expected: identifier after ','"),
        ("(a)", "found '(', expected: identifier"),
        ("Bad Key=1", "found 'Key', expected: in, notin"),
        ("-a=1", "invalid label key '-a'"),
        ("a_/b=1", "invalid label key 'a_/b'"),
        ("x" * 64 + "=1", "invalid label key"),
        ("a=-b", "invalid label value: '-b'"),
        ("a in (ok,bad!)", "found '!', expected: identifier, ',' or ')'"),
        ("a in (ok,-bad)", "invalid label value: '-bad'"),
        ("a=" + "v" * 64, "invalid label value"),
        ("a>b", "the value must be an integer, got 'b'"),
        ("a<", "the value must be an integer, got ''"),
        ("a>99999999999999999999", "the value must be an integer"),
    ],
)
def test_parse_label_selector_errors(text: str, part: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_label_selector(text)
    message = str(info.value)
    assert message.startswith("unable to parse requirement: ")
    assert repr(text) in message
    assert part in message


def test_a_selector_error_is_a_value_error() -> None:
    assert issubclass(SelectorError, ValueError)


# --------------------------------------------------------------------------------------------------------
# Label selector matching


@pytest.mark.parametrize(
    ("text", "labels", "selected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app=web", {"app": "db"}, False),
        ("app=web", {}, False),
        ("app==web", {"app": "web", "x": "y"}, True),
        ("app!=web", {"app": "db"}, True),
        ("app!=web", {"app": "web"}, False),
        ("app!=web", {}, True),
        ("app in (web,db)", {"app": "db"}, True),
        ("app in (web,db)", {"app": "cache"}, False),
        ("app in (web,db)", {}, False),
        ("app notin (web,db)", {"app": "cache"}, True),
        ("app notin (web,db)", {"app": "web"}, False),
        ("app notin (web,db)", {}, True),
        ("app", {"app": ""}, True),
        ("app", {"other": "x"}, False),
        ("!app", {"other": "x"}, True),
        ("!app", {"app": ""}, False),
        ("app=", {"app": ""}, True),
        ("app=", {}, False),
        ("app in ()", {"app": ""}, True),
        ("n>5", {"n": "6"}, True),
        ("n>5", {"n": "5"}, False),
        ("n>5", {"n": "-7"}, False),
        ("n>5", {"n": "six"}, False),
        ("n>5", {}, False),
        ("n<5", {"n": "4"}, True),
        ("n<5", {"n": "+10"}, False),
        ("n<5", {"n": "99999999999999999999"}, False),
        ("app=web,tier", {"app": "web", "tier": "front"}, True),
        ("app=web,tier", {"app": "web"}, False),
        ("app=web,!tier", {"app": "web"}, True),
        ("app in (db,web),tier", {"app": "web", "tier": "front"}, True),
    ],
)
def test_label_selector_matches(text: str, labels: dict[str, str], selected: bool) -> None:
    assert parse_label_selector(text).matches(labels) is selected


def test_label_selector_matches_an_object_without_labels() -> None:
    assert parse_label_selector("app!=web").matches(None)
    assert parse_label_selector("app notin (web)").matches(None)
    assert parse_label_selector("!app").matches(None)
    assert not parse_label_selector("app").matches(None)
    assert not parse_label_selector("app=web").matches(None)


# --------------------------------------------------------------------------------------------------------
# Requirements built directly


@pytest.mark.parametrize(
    ("operator", "values", "message"),
    [
        (Operator.IN, (), "values set can't be empty"),
        (Operator.NOT_IN, (), "values set can't be empty"),
        (Operator.EQUALS, (), "one single value"),
        (Operator.NOT_EQUALS, ("a", "b"), "one single value"),
        (Operator.EXISTS, ("a",), "must be empty for exists"),
        (Operator.DOES_NOT_EXIST, ("a",), "must be empty for exists"),
        (Operator.GREATER_THAN, ("1", "2"), "exactly one value"),
        (Operator.LESS_THAN, ("x",), "must be an integer"),
    ],
)
def test_requirement_validates_its_values(operator: Operator, values: tuple[str, ...], message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        Requirement("key", operator, values)


def test_requirement_validates_its_key() -> None:
    with pytest.raises(SelectorError, match="invalid label key ''"):
        Requirement("", Operator.EXISTS)
    with pytest.raises(SelectorError, match=re.escape("invalid label key 'Not.A.DNS.Name/x'")):
        Requirement("Not.A.DNS.Name/x", Operator.EXISTS)


# --------------------------------------------------------------------------------------------------------
# metav1.LabelSelector


def test_label_selector_from_dict() -> None:
    selector = label_selector_from_dict(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "team", "operator": "Exists", "values": None},
                {"key": "legacy", "operator": "DoesNotExist", "values": []},
            ],
        }
    )
    assert selector == LabelSelector(
        (
            Requirement("app", Operator.EQUALS, ("web",)),
            Requirement("tier", Operator.IN, ("front", "edge")),
            Requirement("env", Operator.NOT_IN, ("dev",)),
            Requirement("team", Operator.EXISTS),
            Requirement("legacy", Operator.DOES_NOT_EXIST),
        )
    )
    assert selector.matches({"app": "web", "tier": "edge", "team": "a"})
    assert not selector.matches({"app": "web", "tier": "edge", "team": "a", "env": "dev"})
    assert not selector.matches({"app": "web", "tier": "edge", "team": "a", "legacy": "1"})
    assert not selector.matches({"app": "web", "tier": "back", "team": "a"})
    assert str(selector) == "app=web,tier in (front,edge),env notin (dev),team,!legacy"


@pytest.mark.parametrize(
    "value", [None, {}, {"matchLabels": {}}, {"matchLabels": None, "matchExpressions": None}]
)
def test_label_selector_from_an_empty_dict_selects_everything(value: dict[str, Any] | None) -> None:
    selector = label_selector_from_dict(value)
    assert selector.empty
    assert selector.matches({"a": "b"}) and selector.matches(None)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]},
            "'Equals' is not a valid",
        ),
        (
            {"matchExpressions": [{"key": "a", "values": ["b"]}]},
            "None is not a valid label selector operator",
        ),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "values set can't be empty"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}, "values set can't be empty"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]}, "must be empty"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": "b"}]}, "values must be a list"),
        (
            {"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]},
            "values must be a list of strings",
        ),
        ({"matchExpressions": [{"operator": "Exists"}]}, r"matchExpressions\[0\]: key must be a string"),
        ({"matchExpressions": ["a"]}, "must be an object"),
        ({"matchExpressions": {"key": "a"}}, "matchExpressions must be a list"),
        (
            {"matchExpressions": [{"key": "-a", "operator": "Exists"}]},
            r"matchExpressions\[0\]: invalid label key",
        ),
        ({"matchLabels": {"a": 1}}, "keys and values must be strings"),
        ({"matchLabels": ["a"]}, "matchLabels must be an object"),
        ({"matchLabels": {"a": "-b"}}, "matchLabels: a: invalid label value"),
    ],
)
def test_label_selector_from_dict_errors(value: dict[str, Any], message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        label_selector_from_dict(value)


def test_label_selector_from_a_non_mapping_is_an_error() -> None:
    with pytest.raises(SelectorError, match="must be an object"):
        label_selector_from_dict(["a"])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Label selector properties

name_part = st.from_regex(r"[a-z0-9]([-a-z0-9_.]{0,10}[a-z0-9])?", fullmatch=True)
prefixes = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,5}[a-z0-9])?(\.[a-z0-9]{1,5}){0,2}", fullmatch=True)
label_keys = st.builds(lambda p, n: f"{p}/{n}" if p else n, st.none() | prefixes, name_part).filter(
    lambda k: k not in ("in", "notin")
)
label_values = st.just("") | st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?", fullmatch=True)
integers = st.integers(-(2**63), 2**63 - 1).map(str).filter(lambda v: not v.startswith("-"))


@st.composite
def requirements(draw: st.DrawFn) -> Requirement:
    key = draw(label_keys)
    operator = draw(st.sampled_from(list(Operator)))
    if operator in (Operator.IN, Operator.NOT_IN):
        values = tuple(dict.fromkeys(draw(st.lists(label_values, min_size=1, max_size=3))))
    elif operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST):
        values = ()
    elif operator in (Operator.GREATER_THAN, Operator.LESS_THAN):
        values = (draw(integers),)
    else:
        values = (draw(label_values),)
    return Requirement(key, operator, values)


@given(st.lists(requirements(), max_size=4))
def test_label_selector_string_form_parses_back(requirement_list: list[Requirement]) -> None:
    selector = LabelSelector(tuple(requirement_list))
    assert parse_label_selector(str(selector)) == selector


small_keys = st.sampled_from(["a", "b", "c"])
small_values = st.sampled_from(["", "x", "y", "7"])
label_sets = st.dictionaries(small_keys, small_values, max_size=3)


@given(small_keys, small_values, label_sets)
def test_equality_requirements_match_like_their_definition(
    key: str, value: str, labels: dict[str, str]
) -> None:
    assert parse_label_selector(f"{key}={value}").matches(labels) is (labels.get(key) == value)
    assert parse_label_selector(f"{key}=={value}").matches(labels) is (labels.get(key) == value)
    assert parse_label_selector(f"{key}!={value}").matches(labels) is (labels.get(key) != value)


@given(small_keys, st.lists(small_values, min_size=1, max_size=3), label_sets)
def test_set_requirements_match_like_their_definition(
    key: str, values: list[str], labels: dict[str, str]
) -> None:
    listed = ",".join(values)
    inside = key in labels and labels[key] in values
    assert parse_label_selector(f"{key} in ({listed})").matches(labels) is inside
    assert parse_label_selector(f"{key} notin ({listed})").matches(labels) is (not inside)
    assert parse_label_selector(key).matches(labels) is (key in labels)
    assert parse_label_selector(f"!{key}").matches(labels) is (key not in labels)


@given(st.lists(st.tuples(small_keys, small_values), min_size=1, max_size=3), label_sets)
def test_a_selector_is_the_conjunction_of_its_requirements(
    terms: list[tuple[str, str]], labels: dict[str, str]
) -> None:
    selector = parse_label_selector(",".join(f"{k}={v}" for k, v in terms))
    assert selector.matches(labels) is all(labels.get(k) == v for k, v in terms)


# --------------------------------------------------------------------------------------------------------
# Field selectors


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("metadata.name=a", [("metadata.name", "=", "a")]),
        ("metadata.name==a", [("metadata.name", "==", "a")]),
        ("status.phase!=Running", [("status.phase", "!=", "Running")]),
        ("a=b,c!=d,e==f", [("a", "=", "b"), ("c", "!=", "d"), ("e", "==", "f")]),
        ("spec.nodeName=", [("spec.nodeName", "=", "")]),
        ("a=!b", [("a", "=", "!b")]),
        (r"a=b\,c", [("a", "=", "b,c")]),
        (r"a=b\=c", [("a", "=", "b=c")]),
        (r"a=b\\c", [("a", "=", "b\\c")]),
        (r"a=b\\,c=d", [("a", "=", "b\\"), ("c", "=", "d")]),
        ("a=b,,c=d,", [("a", "=", "b"), ("c", "=", "d")]),
        ("  metadata.name = a  ,  spec.x != y ", [("metadata.name", "=", "a"), ("spec.x", "!=", "y")]),
        ("a=b c", [("a", "=", "b c")]),
    ],
)
def test_parse_field_selector(text: str, expected: list[tuple[str, str, str]]) -> None:
    selector = parse_field_selector(text)
    assert selector.requirements == expected
    assert selector.fields() == {name for name, _, _ in expected}


@pytest.mark.parametrize("text", ["", ",", " , "])
def test_an_empty_field_selector_selects_everything(text: str) -> None:
    selector = parse_field_selector(text)
    assert selector.empty
    assert selector.fields() == set()
    assert selector.matches(lambda name: None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metadata.name", "can't understand 'metadata.name'"),
        ("a=b,c", "can't understand 'c'"),
        ("=b", "has no field name"),
        (" !=b", "has no field name"),
        ("a=b=c", "unescaped '=' in value 'b=c'"),
        ("a===b", "unescaped '='"),
        (r"a=b\x", r"invalid escape sequence '\x'"),
        ("a=b\\", "ends with a lone backslash"),
    ],
)
def test_parse_field_selector_errors(text: str, message: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse_field_selector(text)
    assert message in str(info.value)
    assert repr(text) in str(info.value)


def test_field_selector_matches_through_the_getter() -> None:
    pod = {"metadata.name": "web-1", "status.phase": "Running", "spec.nodeName": None}
    get = pod.get

    def selects(text: str) -> bool:
        return parse_field_selector(text).matches(get)

    assert selects("metadata.name=web-1")
    assert selects("metadata.name==web-1,status.phase!=Pending")
    assert not selects("metadata.name=web-1,status.phase=Pending")
    assert not selects("metadata.name!=web-1")
    assert selects("spec.nodeName=")  # a missing field equals the empty string
    assert not selects("spec.nodeName!=")
    assert selects("spec.unknown=")
    assert selects("spec.unknown!=x")
    assert not selects("spec.unknown=x")


def test_field_selector_exact_value() -> None:
    selector = parse_field_selector("metadata.namespace!=kube-system,metadata.name==a,spec.x=b")
    assert selector.exact_value("metadata.name") == "a"
    assert selector.exact_value("spec.x") == "b"
    assert selector.exact_value("metadata.namespace") is None
    assert selector.exact_value("nope") is None


def test_field_selector_string_form_escapes_values() -> None:
    selector = FieldSelector([("a", "=", "x,y=z\\"), ("b", "!=", "")])
    assert str(selector) == r"a=x\,y\=z\\,b!="
    assert parse_field_selector(str(selector)) == selector


field_names = st.from_regex(r"[a-z][a-zA-Z]{0,5}(\.[a-z][a-zA-Z]{0,5}){0,2}", fullmatch=True)
field_values = st.text(max_size=8).filter(lambda v: v == v.strip())


@given(st.lists(st.tuples(field_names, st.sampled_from(["=", "==", "!="]), field_values), max_size=4))
def test_field_selector_string_form_parses_back(requirements: list[tuple[str, str, str]]) -> None:
    selector = FieldSelector(requirements)
    assert parse_field_selector(str(selector)) == selector


@given(st.text(max_size=10))
def test_escaped_field_values_parse_back(value: str) -> None:
    stripped = value.strip()
    assert parse_field_selector(f"f={escape_field_value(stripped)}").requirements == [("f", "=", stripped)]


@given(field_values, st.one_of(st.none(), field_values))
def test_field_requirements_match_like_their_definition(value: str, actual: str | None) -> None:
    def get(name: str) -> str | None:
        return actual

    equal = (actual or "") == value
    escaped = escape_field_value(value)
    assert parse_field_selector(f"f={escaped}").matches(get) is equal
    assert parse_field_selector(f"f=={escaped}").matches(get) is equal
    assert parse_field_selector(f"f!={escaped}").matches(get) is (not equal)
