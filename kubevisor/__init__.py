"""kubevisor: virtual machines and containers side by side behind a Kubernetes/KubeVirt-compatible API."""

__version__ = "0.1.0"
