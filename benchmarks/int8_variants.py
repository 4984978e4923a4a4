"""CPU INT8: where the INT8 model's time goes, and which quantization variants are faster. 2 threads,
batch 1, 640x640, the default model; ONNX Runtime. Variants, all QDQ with the head's decoding in float (as
yolotune.tune.int8 does), MinMax calibration on 24 generated held-out images:
- "shipped": every supported op quantized, per-channel weights (yolotune's INT8 model);
- "float SiLU": the Sigmoid and Mul of each SiLU left in float between dequantize and quantize;
- "conv only": only the convolutions quantized;
- "per-tensor": per-tensor weights;
- "concat shares": the shipped model with each Concat's inputs given the Concat output's scale and zero point (where
  the input's quantized tensor feeds only that Concat), so ONNX Runtime's QLinearConcat copies instead of
  requantizing.
Timed in interleaved rounds against the FP32 export, then the shipped model's and FP32's time per operator type
(ORT profiling). Writes int8_variants_cpu.json under $OUT (default benchmarks/results/optimize)."""

from __future__ import annotations

import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from optimize_cpu import interleaved_ms  # noqa: E402

from yolotune.data.synth import write_dataset  # noqa: E402
from yolotune.models import load_model  # noqa: E402
from yolotune.models.export import export_onnx  # noqa: E402
from yolotune.tune.int8 import _head_nodes_to_exclude, calibration_batches, quantize_int8  # noqa: E402


def op_profile(path: Path, x: np.ndarray, work: Path, runs: int = 30) -> dict:
    """ms per run for each operator type, from ONNX Runtime's profiler."""
    o = ort.SessionOptions()
    o.intra_op_num_threads, o.enable_profiling, o.profile_file_prefix = 2, True, str(work / "prof")
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        s.run(None, {s.get_inputs()[0].name: x})
    events = json.loads(Path(s.end_profiling()).read_text())
    ms: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            ms[e["args"]["op_name"]] += e["dur"] / 1e3 / runs
    return {op: round(v, 3) for op, v in ms.most_common(12)}


def share_concat_qparams(src: Path, dst: Path) -> int:
    """Point each Concat input's Q/DQ pair at the Concat output's scale and zero point, where that quantized input
    feeds only the Concat (changing a tensor that other nodes read would change their inputs' precision too).
    Returns how many inputs changed."""
    m = onnx.load(str(src))
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    changed = 0
    for n in g.node:
        outs = consumers[n.output[0]] if n.op_type == "Concat" else []
        if len(outs) != 1 or outs[0].op_type != "QuantizeLinear":
            continue
        q_out = outs[0]
        for dq in (producer.get(i) for i in n.input):
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue
            readers = consumers[q.output[0]]
            if not all(r.op_type == "DequantizeLinear" and all(c is n for c in consumers[r.output[0]]) for r in readers):
                continue
            for node in [q, *readers]:
                node.input[1], node.input[2] = q_out.input[1], q_out.input[2]
            changed += 1
    onnx.save(m, str(dst))
    return changed


def main() -> None:
    out = Path(os.environ.get("OUT") or Path(__file__).resolve().parent / "results" / "optimize")
    work = Path(tempfile.mkdtemp(prefix="int8-variants-"))
    fp32 = export_onnx(load_model("default"), work / "fp32.onnx", imgsz=(640, 640), dynamic_batch=False)
    ds = write_dataset(work / "heldout", 24, seed=1, workers=os.cpu_count())
    cal = calibration_batches(sorted(str(p) for p in Path(ds).rglob("*.jpg")), (640, 640), limit=24)
    model = onnx.load(str(fp32))
    head = _head_nodes_to_exclude(model)
    silu = [n.name for n in model.graph.node if n.op_type in ("Sigmoid", "Mul") and n.name not in head]
    paths = {
        "fp32": fp32,
        "shipped": quantize_int8(fp32, work / "shipped.onnx", cal),
        "float SiLU": quantize_int8(fp32, work / "silu.onnx", cal, also_exclude=silu),
        "conv only": quantize_int8(fp32, work / "conv.onnx", cal, op_types=["Conv"]),
        "per-tensor": quantize_int8(fp32, work / "tensor.onnx", cal, per_channel=False),
    }
    paths["concat shares"] = work / "concat.onnx"
    shared = share_concat_qparams(paths["shipped"], paths["concat shares"])
    timing = interleaved_ms({k: str(v) for k, v in paths.items()}, 2, cal[0], rounds=6)
    rows = {k: {**v, "vs_fp32": timing["fp32"]["min_ms"] / v["min_ms"]} for k, v in timing.items()}
    result = {"cores": os.cpu_count(), "threads": 2, "timing": rows,
              "concat_inputs_changed": shared,
              "ms_by_operator": {"shipped": op_profile(paths["shipped"], cal[0], work), "fp32": op_profile(fp32, cal[0], work),
                                 "concat shares": op_profile(paths["concat shares"], cal[0], work)}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_variants_cpu.json").write_text(json.dumps(result, indent=1))
    for k, v in rows.items():
        print(f"{k:12s} {v['min_ms']:6.2f} ms  {v['vs_fp32']:.2f}x FP32")
    print(json.dumps(result["ms_by_operator"], indent=1))


if __name__ == "__main__":
    main()
