"""The Hugging Face Hub: push and pull (:mod:`rws.hub.client`), model cards (:mod:`rws.hub.card`)."""

from rws.hub.client import PushResult, pull, push

__all__ = ["PushResult", "pull", "push"]
