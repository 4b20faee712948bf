"""Kubernetes label and field selectors: parsing and matching.

Why this module exists: list and watch requests filter objects with ``?labelSelector=`` and
``?fieldSelector=``, and many objects carry a ``metav1.LabelSelector`` (``matchLabels`` /
``matchExpressions``) that controllers evaluate. The syntax and matching rules are Kubernetes'
(apimachinery ``pkg/labels`` and ``pkg/fields``) so that kubectl and client libraries behave as they do
against a real cluster. The module is pure: no I/O, no knowledge of kinds.

Invariants:

* A :class:`Requirement` is valid by construction: its key is a qualified name, its values are label
  values, and its number of values fits its operator; anything else raises :class:`SelectorError`.
* Every parse failure raises :class:`SelectorError` (a ``ValueError``) naming the offending part; label
  selector syntax errors start with ``unable to parse requirement:``.
* An empty selector (empty string, ``None`` or ``{}``) matches every object.
* ``str()`` of a parsed selector is valid selector syntax that parses back to an equal selector.

Label selector syntax: comma-separated requirements, all of which must hold: ``k=v``, ``k==v``, ``k!=v``,
``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists), ``!k`` (does not exist), and ``k>n`` / ``k<n`` (the
label value, read as an integer, is greater / less than ``n``). Whitespace between tokens is ignored.
``!=`` and ``notin`` match objects that lack the key.

Field selector syntax: comma-separated ``field=value``, ``field==value`` or ``field!=value`` terms. Values
may escape ``\\``, ``,`` and ``=`` with a backslash; unescaped ``,`` separates terms and an unescaped ``=``
in a value is an error. Whitespace around field names and values is ignored. A field the object lacks
compares as the empty string.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from kubevisor.api.validation import label_value, qualified_name


class SelectorError(ValueError):
    """A label or field selector is malformed."""


# --------------------------------------------------------------------------------------------------------
# Label selectors


class Operator(StrEnum):
    """A label requirement's operator; values are apimachinery's ``selection.Operator`` strings."""

    IN = "in"
    NOT_IN = "notin"
    EQUALS = "="
    DOUBLE_EQUALS = "=="
    NOT_EQUALS = "!="
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    GREATER_THAN = "gt"
    LESS_THAN = "lt"


_SET_OPERATORS: Final = frozenset({Operator.IN, Operator.NOT_IN})
_EXACT_OPERATORS: Final = frozenset({Operator.EQUALS, Operator.DOUBLE_EQUALS, Operator.NOT_EQUALS})
_EXISTENCE_OPERATORS: Final = frozenset({Operator.EXISTS, Operator.DOES_NOT_EXIST})
_NUMERIC_OPERATORS: Final = frozenset({Operator.GREATER_THAN, Operator.LESS_THAN})
_INTEGER: Final = re.compile(r"[+-]?[0-9]+")
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


def _parse_int64(text: str) -> int | None:
    """``text`` as a 64-bit integer the way Go's ``strconv.ParseInt(text, 10, 64)`` reads it, else None."""
    if not _INTEGER.fullmatch(text):
        return None
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


@dataclass(frozen=True, slots=True)
class Requirement:
    """One condition on one label key."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        errors = qualified_name(self.key, "key")
        if errors:
            raise SelectorError(f"invalid label key {self.key!r}: {errors[0].message}")
        count = len(self.values)
        if self.operator in _SET_OPERATORS and count == 0:
            raise SelectorError(f"{self.key}: for 'in', 'notin' operators, values set can't be empty")
        if self.operator in _EXACT_OPERATORS and count != 1:
            raise SelectorError(f"{self.key}: exact-match compatibility requires one single value")
        if self.operator in _EXISTENCE_OPERATORS and count != 0:
            raise SelectorError(f"{self.key}: values set must be empty for exists and does not exist")
        if self.operator in _NUMERIC_OPERATORS:
            if count != 1:
                raise SelectorError(f"{self.key}: for 'gt', 'lt' operators, exactly one value is required")
            if _parse_int64(self.values[0]) is None:
                raise SelectorError(
                    f"{self.key}: for 'gt', 'lt' operators, the value must be an integer, "
                    f"got {self.values[0]!r}"
                )
        for value in self.values:
            errors = label_value(value, "value")
            if errors:
                raise SelectorError(f"{self.key}: invalid label value: {errors[0].message}")

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a set of labels satisfies this requirement."""
        present = self.key in labels
        match self.operator:
            case Operator.IN | Operator.EQUALS | Operator.DOUBLE_EQUALS:
                return present and labels[self.key] in self.values
            case Operator.NOT_IN | Operator.NOT_EQUALS:
                return not present or labels[self.key] not in self.values
            case Operator.EXISTS:
                return present
            case Operator.DOES_NOT_EXIST:
                return not present
            case Operator.GREATER_THAN | Operator.LESS_THAN:
                if not present:
                    return False
                actual = _parse_int64(labels[self.key])
                if actual is None:
                    return False
                wanted = int(self.values[0])
                return actual > wanted if self.operator is Operator.GREATER_THAN else actual < wanted
        raise AssertionError(self.operator)  # pragma: no cover - the match is exhaustive

    def __str__(self) -> str:
        match self.operator:
            case Operator.EXISTS:
                return self.key
            case Operator.DOES_NOT_EXIST:
                return f"!{self.key}"
            case Operator.IN | Operator.NOT_IN:
                return f"{self.key} {self.operator.value} ({','.join(self.values)})"
            case Operator.GREATER_THAN:
                return f"{self.key}>{self.values[0]}"
            case Operator.LESS_THAN:
                return f"{self.key}<{self.values[0]}"
            case _:
                return f"{self.key}{self.operator.value}{self.values[0]}"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A conjunction of label requirements; with none it selects everything."""

    requirements: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        """True when the selector has no requirements (it matches every object)."""
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """Whether an object with these labels (``None`` for none) is selected."""
        present: Mapping[str, str] = labels if labels is not None else {}
        return all(r.matches(present) for r in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)


EVERYTHING: Final = LabelSelector()
"""The label selector that matches every object."""


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    """``ident``, ``in``, ``notin``, one of ``( ) , ! = == != < >``, or ``end``."""
    text: str
    position: int

    def describe(self) -> str:
        return "end of string" if self.kind == "end" else f"'{self.text}'"


_SPECIAL: Final = frozenset("=!(),<>")
_VALUE_KINDS: Final = frozenset({"ident", "in", "notin"})


def _tokenize(text: str) -> list[_Token]:
    """Split a label selector into tokens, as apimachinery's lexer does."""
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
        elif char in _SPECIAL:
            pair = text[i : i + 2]
            if pair in ("==", "!="):
                tokens.append(_Token(pair, pair, i))
                i += 2
            else:
                tokens.append(_Token(char, char, i))
                i += 1
        else:
            start = i
            while i < len(text) and not text[i].isspace() and text[i] not in _SPECIAL:
                i += 1
            word = text[start:i]
            tokens.append(_Token(word if word in ("in", "notin") else "ident", word, start))
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _LabelParser:
    """Recursive-descent parser over the tokens of one label selector."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._tokens = _tokenize(text)
        self._at = 0

    def _peek(self) -> _Token:
        return self._tokens[self._at]

    def _next(self) -> _Token:
        token = self._tokens[self._at]
        if token.kind != "end":
            self._at += 1
        return token

    def _error(self, detail: str, token: _Token | None = None) -> SelectorError:
        where = f"position {token.position} of " if token is not None else ""
        return SelectorError(f"unable to parse requirement: {detail} ({where}{self._text!r})")

    def _unexpected(self, token: _Token, expected: str) -> SelectorError:
        return self._error(f"found {token.describe()}, expected: {expected}", token)

    def parse(self) -> LabelSelector:
        if self._peek().kind == "end":
            return EVERYTHING
        requirements: list[Requirement] = []
        while True:
            requirements.append(self._requirement())
            token = self._next()
            if token.kind == "end":
                return LabelSelector(tuple(requirements))
            if token.kind != ",":
                raise self._unexpected(token, "',' or 'end of string'")
            following = self._peek()
            if following.kind not in ("ident", "!"):
                raise self._unexpected(following, "identifier after ','")

    def _requirement(self) -> Requirement:
        token = self._next()
        negated = token.kind == "!"
        if negated:
            token = self._next()
        if token.kind != "ident":
            raise self._unexpected(token, "identifier")
        key = token.text
        if negated:
            return self._build(key, Operator.DOES_NOT_EXIST, (), token)
        if self._peek().kind in ("end", ","):
            return self._build(key, Operator.EXISTS, (), token)
        operator_token = self._next()
        match operator_token.kind:
            case "in":
                return self._build(key, Operator.IN, self._set_values(), token)
            case "notin":
                return self._build(key, Operator.NOT_IN, self._set_values(), token)
            case "=":
                return self._build(key, Operator.EQUALS, (self._exact_value(),), token)
            case "==":
                return self._build(key, Operator.DOUBLE_EQUALS, (self._exact_value(),), token)
            case "!=":
                return self._build(key, Operator.NOT_EQUALS, (self._exact_value(),), token)
            case ">":
                return self._build(key, Operator.GREATER_THAN, (self._exact_value(),), token)
            case "<":
                return self._build(key, Operator.LESS_THAN, (self._exact_value(),), token)
        raise self._unexpected(operator_token, "in, notin, =, ==, !=, >, <")

    def _build(self, key: str, operator: Operator, values: tuple[str, ...], token: _Token) -> Requirement:
        try:
            return Requirement(key, operator, values)
        except SelectorError as e:
            raise self._error(str(e), token) from None

    def _exact_value(self) -> str:
        if self._peek().kind in ("end", ","):
            return ""  # "k=" selects an empty value
        token = self._next()
        if token.kind not in _VALUE_KINDS:
            raise self._unexpected(token, "identifier")
        return token.text

    def _set_values(self) -> tuple[str, ...]:
        token = self._next()
        if token.kind != "(":
            raise self._unexpected(token, "'('")
        values: list[str] = []
        expecting_value = True
        while True:
            token = self._next()
            if token.kind in _VALUE_KINDS:
                if not expecting_value:
                    raise self._unexpected(token, "',' or ')'")
                values.append(token.text)
                expecting_value = False
            elif token.kind == ",":
                if expecting_value:
                    values.append("")  # "(,a)" and "(a,,b)" hold the empty value
                expecting_value = True
            elif token.kind == ")":
                if expecting_value:
                    values.append("")  # "()" and "(a,)" hold the empty value
                return tuple(dict.fromkeys(values))
            else:
                raise self._unexpected(token, "identifier, ',' or ')'")


def parse_label_selector(text: str) -> LabelSelector:
    """Parse the string form of a label selector (``?labelSelector=``, ``kubectl -l``)."""
    return _LabelParser(text).parse()


_EXPRESSION_OPERATORS: Final = {
    "In": Operator.IN,
    "NotIn": Operator.NOT_IN,
    "Exists": Operator.EXISTS,
    "DoesNotExist": Operator.DOES_NOT_EXIST,
}


def label_selector_from_dict(selector: Mapping[str, Any] | None) -> LabelSelector:
    """Convert a ``metav1.LabelSelector`` (``matchLabels`` / ``matchExpressions``) as plain JSON.

    ``None`` and ``{}`` select everything.
    """
    if not selector:
        return EVERYTHING
    if not isinstance(selector, Mapping):
        raise SelectorError(f"a label selector must be an object, got {type(selector).__name__}")
    requirements: list[Requirement] = []
    match_labels = selector.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        raise SelectorError("matchLabels must be an object of label keys to values")
    for key, value in match_labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise SelectorError(f"matchLabels: {key!r}: {value!r}: keys and values must be strings")
        requirements.append(_from_dict_requirement(key, Operator.EQUALS, (value,), "matchLabels"))
    expressions = selector.get("matchExpressions") or []
    if not isinstance(expressions, list):
        raise SelectorError("matchExpressions must be a list")
    for i, expression in enumerate(expressions):
        where = f"matchExpressions[{i}]"
        if not isinstance(expression, Mapping):
            raise SelectorError(f"{where}: must be an object with key, operator and values")
        key = expression.get("key")
        if not isinstance(key, str):
            raise SelectorError(f"{where}: key must be a string")
        operator_name = expression.get("operator")
        operator = _EXPRESSION_OPERATORS.get(operator_name) if isinstance(operator_name, str) else None
        if operator is None:
            raise SelectorError(f"{where}: {operator_name!r} is not a valid label selector operator")
        values = expression.get("values") or []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SelectorError(f"{where}: values must be a list of strings")
        requirements.append(_from_dict_requirement(key, operator, tuple(dict.fromkeys(values)), where))
    return LabelSelector(tuple(requirements))


def _from_dict_requirement(key: str, operator: Operator, values: tuple[str, ...], where: str) -> Requirement:
    try:
        return Requirement(key, operator, values)
    except SelectorError as e:
        raise SelectorError(f"{where}: {e}") from None


# --------------------------------------------------------------------------------------------------------
# Field selectors

FIELD_OPERATORS: Final = ("!=", "==", "=")
"""Field selector operators, in the order they are looked for at each position of a term."""


@dataclass(slots=True)
class FieldSelector:
    """A conjunction of ``(field, operator, value)`` requirements; with none it selects everything."""

    requirements: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """True when the selector has no requirements (it matches every object)."""
        return not self.requirements

    def fields(self) -> set[str]:
        """The field names the selector uses, for the server to refuse unsupported ones."""
        return {name for name, _, _ in self.requirements}

    def exact_value(self, name: str) -> str | None:
        """The value ``name`` must equal, if some requirement pins it (useful for index lookups)."""
        for field_name, operator, value in self.requirements:
            if field_name == name and operator in ("=", "=="):
                return value
        return None

    def matches(self, get: Callable[[str], str | None]) -> bool:
        """Whether an object is selected; ``get`` returns its value for a field (``None`` when absent)."""
        for name, operator, value in self.requirements:
            actual = get(name)
            equal = (actual if actual is not None else "") == value
            if equal == (operator == "!="):
                return False
        return True

    def __str__(self) -> str:
        return ",".join(
            f"{name}{operator}{escape_field_value(value)}" for name, operator, value in self.requirements
        )


def escape_field_value(value: str) -> str:
    """Escape ``\\``, ``,`` and ``=`` so that ``value`` can appear in a field selector."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def _split_unescaped(text: str) -> Iterator[tuple[int, str]]:
    """Yield ``(index, char)`` for the characters of ``text`` that are not escaped by a backslash."""
    escaped = False
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
            yield i, char
        else:
            yield i, char


def _terms(text: str) -> list[str]:
    terms: list[str] = []
    start = 0
    for i, char in _split_unescaped(text):
        if char == ",":
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    for i, char in _split_unescaped(term):
        if char in "!=":
            for operator in FIELD_OPERATORS:
                if term.startswith(operator, i):
                    return term[:i], operator, term[i + len(operator) :]
    return None


def _unescape(value: str, text: str) -> str:
    out: list[str] = []
    escaped = False
    for char in value:
        if escaped:
            if char not in "\\,=":
                raise SelectorError(f"invalid field selector {text!r}: invalid escape sequence '\\{char}'")
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",=":
            raise SelectorError(
                f"invalid field selector {text!r}: unescaped '{char}' in value {value!r} (write '\\{char}')"
            )
        else:
            out.append(char)
    if escaped:
        raise SelectorError(f"invalid field selector {text!r}: value {value!r} ends with a lone backslash")
    return "".join(out)


def parse_field_selector(text: str) -> FieldSelector:
    """Parse the string form of a field selector (``?fieldSelector=``, ``kubectl --field-selector``)."""
    requirements: list[tuple[str, str, str]] = []
    for term in _terms(text):
        if not term.strip():
            continue  # apimachinery skips empty terms ("a=b,,c=d", a trailing comma)
        parts = _split_term(term)
        if parts is None:
            raise SelectorError(
                f"invalid field selector {text!r}: can't understand {term!r} (expected field=value, "
                "field==value or field!=value)"
            )
        name, operator, raw_value = parts
        name = name.strip()
        if not name:
            raise SelectorError(f"invalid field selector {text!r}: {term!r} has no field name")
        requirements.append((name, operator, _unescape(raw_value.strip(), text)))
    return FieldSelector(requirements)
