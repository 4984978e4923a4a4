"""Engines run a prepared batch through a model: PyTorch (eager or CUDA graph) or ONNX Runtime."""

from yolotune.engine.base import PRECISIONS, Engine, build_engine, register_engine

__all__ = ["PRECISIONS", "Engine", "build_engine", "register_engine"]
