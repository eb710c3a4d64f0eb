"""Kubermesh: Kubernetes on a mesh of ordinary PCs."""
