"""FINN's compiler front end on a bnnprune QONNX export, run inside FINN's own environment.

    .venv-finn/bin/python -I src/bnnprune/deploy/finn_flow.py MODEL.onnx --report OUT.json
        [--inputs X.npy --outputs Y.npz] [--target-fps 1000] [--clock-mhz 200]
        [--fpga-part xc7z020clg400-1] [--segments]

This file imports only numpy, qonnx and FINN (finn-plus), never bnnprune: FINN pins numpy,
onnx and qonnx to other versions than bnnprune's, so it runs in ``.venv-finn``
(``scripts/setup.sh --fpga``) and bnnprune calls it as a subprocess
(:mod:`bnnprune.deploy.finn_run`). The steps are FINN's own build steps
(``finn.builder.build_dataflow_steps``: qonnx_to_finn, tidy_up, streamline, convert_to_hw,
specialize_layers, target_fps_parallelization, generate_estimate_reports), called one
transformation at a time because FINN's build configuration imports the multi-FPGA
partitioner's 600 MB solver and its later steps need Vivado:

1. ``ConvertQONNXtoFINN`` and tidy-up; 2. streamlining (scales absorbed into thresholds,
convolutions lowered to Im2Col + MatMul, bipolar MatMuls to XNOR-popcount; the integer code
before an average pool's window sums taken out of its NCHW transposes); 3. conversion to
hardware layers (MVAU, Thresholding, FMPadding, ConvolutionInputGenerator, Pool, and for
window sums ElementwiseMul/Add and VVAU); 4. FINN's dataflow partition: one, as FINN builds,
or with ``--segments`` one per contiguous run of hardware layers (float ops between them stay
outside, listed in the report's ``between``); 5. ``SpecializeLayers`` for ``--fpga-part`` (HLS
or RTL variants); 6. ``SetFolding`` for ``clock / target_fps`` cycles per frame (FINN's
defaults: 36-bit weight streams, two-pass relaxation), each partition alike; 7. FINN's
analytic estimates per layer: ``res_estimation`` (LUT, BRAM_18K, URAM, DSP) and
``exp_cycles_per_layer``, and the nodes left outside the dataflow. FINN's bit-width
minimization steps (``step_minimize_bit_width*``) are not run: accumulators and the integer
code keep the widths FINN's conversion gives them (32 bits for the elementwise layers).

With ``--inputs``, FINN executes the streamlined graph and the hardware-layer graph
(``finn.core.onnx_exec``, Python execution of every node, no Vivado) on those images and
writes every one-bit activation (threshold and max-pool outputs, in graph order, NCHW, as
FINN's 0/1 bits) and the graph output to ``--outputs``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import Any

import numpy as np

ONE_BIT_PRODUCERS = ("MultiThreshold", "MaxPoolNHWC", "MaxPool", "Thresholding", "Pool",
                     "Thresholding_hls", "Thresholding_rtl", "Pool_hls")
DEFAULT_PART = "xc7z020clg400-1"  # Pynq-Z1 / Zynq-7020, FINN's usual first target


def to_finn(model: Any) -> Any:
    """QONNX -> FINN-ONNX, then FINN's tidy-up (step_qonnx_to_finn, step_tidy_up)."""
    from finn.transformation.qonnx.convert_qonnx_to_finn import ConvertQONNXtoFINN
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import (
        GiveReadableTensorNames,
        GiveUniqueNodeNames,
        RemoveStaticGraphInputs,
    )
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.cleanup import cleanup_model

    model = cleanup_model(model).transform(ConvertQONNXtoFINN())
    for t in (InferShapes(), FoldConstants(), GiveUniqueNodeNames(), GiveReadableTensorNames(),
              InferDataTypes(), RemoveStaticGraphInputs()):
        model = model.transform(t)
    return model


def streamline(model: Any) -> Any:
    """FINN's step_streamline, transformation for transformation."""
    import finn.transformation.streamline.absorb as absorb
    from finn.transformation.streamline import Streamline
    from finn.transformation.streamline.reorder import MakeMaxPoolNHWC
    from qonnx.transformation.bipolar_to_xnor import ConvertBipolarMatMulToXnorPopcount
    from qonnx.transformation.general import RemoveUnusedTensors
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.lower_convs_to_matmul import LowerConvsToMatMul

    model = model.transform(absorb.AbsorbScalarBiasIntoMultiThreshold()).transform(Streamline())
    if model.get_nodes_by_op_type("Conv"):
        for t in (LowerConvsToMatMul(), MakeMaxPoolNHWC(),
                  absorb.AbsorbTransposeIntoMultiThreshold(), MakeMaxPoolNHWC(),
                  absorb.AbsorbConsecutiveTransposes()):
            model = model.transform(t)
    model = integer_code_nhwc(model)
    for t in (ConvertBipolarMatMulToXnorPopcount(), Streamline(),
              absorb.AbsorbScalarMulAddIntoTopK(), InferDataLayouts(), RemoveUnusedTensors()):
        model = model.transform(t)
    return model


def integer_code_nhwc(model: Any) -> Any:
    """``Transpose(to NCHW) -> Mul/Add by constants -> Transpose(to NHWC)`` on an integer
    stream (the integer code before NIN's window sums, between two lowered convolutions)
    becomes the same Mul/Add in NHWC, so FINN's dataflow does not break there. Float
    Mul/Adds (the head) are left alone: FINN's MoveTransposePastEltwise would move those
    too, and its Absorb1BitMulIntoMatMul then fails on their per-channel scales."""
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.util.basic import get_by_name

    def perm(node: Any) -> list[int] | None:
        if node is None or node.op_type != "Transpose":
            return None
        return list(get_by_name(node.attribute, "perm").ints)

    for first in list(model.graph.node):
        if perm(first) != [0, 3, 1, 2] or not model.get_tensor_datatype(
                first.input[0]).is_integer():
            continue
        chain, node = [], model.find_consumer(first.output[0])
        while node is not None and node.op_type in ("Mul", "Add") and _integral(
                model.get_initializer(node.input[1])):
            chain.append(node)
            node = model.find_consumer(node.output[0])
        if not chain or perm(node) != [0, 2, 3, 1]:
            continue
        for n in chain:
            c = model.get_initializer(n.input[1])
            if c.ndim == 4:
                model.set_initializer(n.input[1], np.ascontiguousarray(c.transpose(0, 2, 3, 1)))
        chain[0].input[0] = first.input[0]
        for n in chain:
            model.set_tensor_shape(n.output[0], model.get_tensor_shape(first.input[0]))
        for consumer in model.find_consumers(node.output[0]) or []:
            consumer.input[list(consumer.input).index(node.output[0])] = chain[-1].output[0]
        model.graph.node.remove(first)
        model.graph.node.remove(node)
    return model.transform(InferShapes()).transform(InferDataTypes())


def _integral(c: np.ndarray | None) -> bool:
    return c is not None and bool(np.array_equal(c, np.round(c)))


def to_hw(model: Any) -> Any:
    """FINN's step_convert_to_hw for the layers a CNN has (standalone thresholds)."""
    import finn.transformation.fpgadataflow.convert_to_hw.binary_matrix_vector_activation as bmv
    import finn.transformation.fpgadataflow.convert_to_hw.conv_inp_gen as cig
    import finn.transformation.fpgadataflow.convert_to_hw.elementwise_binary_operation as ew
    import finn.transformation.fpgadataflow.convert_to_hw.fm_padding as fmp
    import finn.transformation.fpgadataflow.convert_to_hw.pool as pool
    import finn.transformation.fpgadataflow.convert_to_hw.quantized_matrix_vector_activation as qmv
    import finn.transformation.fpgadataflow.convert_to_hw.thresholding as thr
    import finn.transformation.fpgadataflow.convert_to_hw.vector_vector_activation as vva
    import finn.transformation.streamline.absorb as absorb
    from qonnx.transformation.general import GiveUniqueNodeNames
    from qonnx.transformation.infer_data_layouts import InferDataLayouts
    from qonnx.transformation.infer_datatypes import InferDataTypes
    from qonnx.transformation.infer_shapes import InferShapes

    model = annotate_threshold_layouts(model)
    for t in (thr.InferThresholdingLayer(), bmv.InferBinaryMatrixVectorActivation(),
              qmv.InferQuantizedMatrixVectorActivation(), thr.InferThresholdingLayer(),
              ew.InferElementwiseBinaryOperation(_integer_eltwise), InferDataTypes(),
              vva.InferVectorVectorActivation(), thr.InferThresholdingLayer(),
              fmp.InferFMPadding(), pool.InferPool(), cig.InferConvInpGen(),
              absorb.AbsorbConsecutiveTransposes(), GiveUniqueNodeNames(), InferDataLayouts(),
              InferDataTypes(), InferShapes()):
        model = model.transform(t)
    return model


def annotate_threshold_layouts(model: Any) -> Any:
    """Give a MultiThreshold without a layout that of its input when that is NCHW (a sign
    after a float AveragePool that FINN's form cannot sum in integers, e.g. a ceil-mode
    one). Without it qonnx leaves the output layout unknown and FINN's
    InferThresholdingLayer takes the last axis (the width) for the channels, so the layer's
    estimate counts the wrong channels and its execution fails on the thresholds' shape;
    with it FINN wraps the layer in NCHW <-> NHWC transposes."""
    from qonnx.core.data_layout import NCHW
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.transformation.infer_data_layouts import InferDataLayouts

    changed = False
    for node in model.get_nodes_by_op_type("MultiThreshold"):
        inst = getCustomOp(node)
        if not inst.get_nodeattr("data_layout") and model.get_tensor_layout(node.input[0]) == NCHW:
            inst.set_nodeattr("data_layout", "NCHW")
            changed = True
    return model.transform(InferDataLayouts()) if changed else model


def _integer_eltwise(model: Any, node: Any) -> bool:
    """An Add/Mul of a hardware layer's integer output and an integer constant (NIN's integer
    code before its window sums): FINN's elementwise layer. Others (the float head) stay
    outside, so no hardware layer lands after the head's first float op."""
    dyn = [t for t in node.input[:2] if model.get_initializer(t) is None]
    const = [model.get_initializer(t) for t in node.input[:2]
             if model.get_initializer(t) is not None]
    src = model.find_producer(dyn[0]) if len(dyn) == 1 else None
    return (src is not None and is_hw(src) and model.get_tensor_datatype(dyn[0]).is_integer()
            and all(_integral(c) for c in const))


def dataflow_partition(model: Any, workdir: str,
                       segments: bool = False) -> tuple[Any, list[Any], list[list[str]]]:
    """FINN's step_create_dataflow_partition: (parent graph, the hardware layers' graph of each
    partition, the op types left outside between consecutive partitions). FINN builds one
    contiguous partition; with ``segments`` each contiguous run of hardware layers becomes
    its own partition (see :func:`assign_segments`) instead of an error."""
    from finn.analysis.fpgadataflow.unsupported_layers import unsupported_layers
    from finn.transformation.fpgadataflow.create_dataflow_partition import (
        CreateDataflowPartition,
    )
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.custom_op.registry import getCustomOp

    model, between = assign_segments(model)
    if not segments:
        ok, node = model.analysis(unsupported_layers)  # FINN's own check: one partition
        if not ok:
            ops = "; ".join(", ".join(gap) for gap in between) or f"{node.name} ({node.op_type})"
            raise SystemExit(f"FINN cannot map the ops between its hardware layers: {ops} "
                             "(FINN builds one dataflow; --segments folds one per contiguous "
                             "run of hardware layers)")
    parent = model.transform(CreateDataflowPartition(partition_model_dir=workdir))
    sdp = parent.get_nodes_by_op_type("StreamingDataflowPartition")
    if len(sdp) != len(between) + 1:
        raise SystemExit(f"finn_flow: {len(sdp)} dataflow partitions, expected "
                         f"{len(between) + 1}")
    parts = [ModelWrapper(getCustomOp(n).get_nodeattr("model")) for n in sdp]
    return parent, parts, between


def assign_segments(model: Any) -> tuple[Any, list[list[str]]]:
    """Number the contiguous runs of hardware layers (FINN's ``partition_id``): a hardware
    layer continues the segment of its hardware producers and starts the next one after a
    node left outside (a float op between hardware layers), so no path leaves a segment and
    comes back. Returns the model and, per gap between consecutive segments, the op types of
    the nodes outside FINN there (in graph order)."""
    from qonnx.custom_op.registry import getCustomOp
    from qonnx.transformation.general import SortGraph

    model = model.transform(SortGraph())
    seg: dict[str, int] = {}  # tensor -> segment of the last hardware layer upstream of it
    gap: dict[str, bool] = {}  # tensor -> an outside node lies between it and that layer
    level: dict[str, int] = {}  # node name -> segment (hardware) or upstream segment (outside)
    for node in model.graph.node:
        ups = [(seg[t], gap[t]) for t in node.input if t in seg]
        if is_hw(node):
            k = max((s + g for s, g in ups), default=0)
            getCustomOp(node).set_nodeattr("partition_id", k)
            level[node.name] = k
        elif ups:
            level[node.name] = max(s for s, _ in ups)
        for t in node.output:
            if node.name in level:
                seg[t], gap[t] = level[node.name], not is_hw(node)
    used = sorted({level[n.name] for n in model.graph.node if is_hw(n)})
    between: list[list[str]] = [[] for _ in used[1:]]
    downstream: set[str] = set()  # tensors that feed a hardware layer, directly or not
    for node in reversed(model.graph.node):
        if is_hw(node) or any(t in downstream for t in node.output):
            downstream.update(node.input)
    for node in model.graph.node:
        if not is_hw(node) and node.name in level and any(t in downstream for t in node.output):
            between[used.index(level[node.name])].append(node.op_type)
    for node in model.graph.node:  # partition ids 0, 1, ... in order
        if is_hw(node):
            getCustomOp(node).set_nodeattr("partition_id", used.index(level[node.name]))
    return model, between


def fold(model: Any, part: str, target_cycles: int) -> Any:
    """FINN's step_specialize_layers and step_target_fps_parallelization on the dataflow."""
    from finn.transformation.fpgadataflow.set_folding import SetFolding
    from finn.transformation.fpgadataflow.specialize_layers import SpecializeLayers
    from qonnx.transformation.general import GiveUniqueNodeNames

    model = model.transform(SpecializeLayers(part)).transform(GiveUniqueNodeNames())
    return model.transform(SetFolding(target_cycles, mvau_wwidth_max=36,
                                      two_pass_relaxation=True)).transform(GiveUniqueNodeNames())


def is_hw(node: Any) -> bool:
    return node.domain.startswith("finn.custom_op.fpgadataflow")


def layer_report(model: Any, part: str) -> list[dict[str, Any]]:
    """Per hardware layer: type, folding, FINN's expected cycles and resource estimates."""
    from finn.analysis.fpgadataflow.exp_cycles_per_layer import exp_cycles_per_layer
    from finn.analysis.fpgadataflow.res_estimation import res_estimation
    from qonnx.custom_op.registry import getCustomOp

    cycles = model.analysis(exp_cycles_per_layer)
    res = model.analysis(lambda m: res_estimation(m, part))
    rows = []
    for node in model.graph.node:
        if not is_hw(node):
            continue
        inst = getCustomOp(node)
        attrs = {a: inst.get_nodeattr(a) for a in ("PE", "SIMD", "MW", "MH", "NumChannels",
                                                  "IFMChannels", "inputDataType",
                                                  "weightDataType")
                 if a in inst.get_nodeattr_types()}
        r = res.get(node.name, {})
        rows.append({"name": node.name, "op_type": node.op_type,
                     **{k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()},
                     "cycles": int(cycles.get(node.name, 0)),
                     **{k: float(v) for k, v in r.items()}})
    return rows


def one_bit_tensors(model: Any) -> list[str]:
    """Outputs of thresholds and max-pools typed BINARY/BIPOLAR, in graph order."""
    out = []
    for node in model.graph.node:
        if node.op_type in ONE_BIT_PRODUCERS and \
                model.get_tensor_datatype(node.output[0]).name in ("BINARY", "BIPOLAR"):
            out.append(node.output[0])
    return out


def run(model: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """FINN's Python execution of ``model`` on ``x``: its one-bit tensors (NCHW) and output."""
    from finn.core.onnx_exec import execute_onnx
    from qonnx.core.datatype import DataType

    names = one_bit_tensors(model)
    iname, oname = model.graph.input[0].name, model.graph.output[0].name
    outs: dict[str, list[np.ndarray]] = {"output": []}
    for i in range(len(x)):  # FINN's hardware layers run batch 1
        ctx = execute_onnx(model, {iname: x[i:i + 1].astype(np.float32)},
                           return_full_exec_context=True)
        outs["output"].append(ctx[oname])
        for k, name in enumerate(names):
            a = ctx[name]
            if model.get_tensor_datatype(name) == DataType["BIPOLAR"]:
                a = (a + 1) / 2  # the same 0/1 bits as a BINARY stream
            if a.ndim == 4 and _nhwc(model, name):
                a = a.transpose(0, 3, 1, 2)
            outs.setdefault(f"bits_{k:02d}", []).append(a)
    return {k: np.concatenate(v) for k, v in outs.items()}


def _nhwc(model: Any, name: str) -> bool:
    from qonnx.core.data_layout import NHWC

    return model.get_tensor_layout(name) == NHWC


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--report", required=True, help="JSON: graphs per stage, layers, estimates")
    ap.add_argument("--inputs", help=".npy images (N, C, H, W) to execute the graphs on")
    ap.add_argument("--outputs", help=".npz: FINN's one-bit activations and outputs")
    ap.add_argument("--target-fps", type=float, default=1000.0)
    ap.add_argument("--clock-mhz", type=float, default=200.0)
    ap.add_argument("--fpga-part", default=DEFAULT_PART)
    ap.add_argument("--segments", action="store_true",
                    help="one dataflow partition per contiguous run of hardware layers, "
                         "instead of refusing a graph with an op left outside between them")
    args = ap.parse_args(argv)
    if (args.inputs is None) != (args.outputs is None):
        ap.error("--inputs and --outputs go together")
    from qonnx.core.modelwrapper import ModelWrapper

    target = max(1, int(args.clock_mhz * 1e6 / args.target_fps))
    stages: dict[str, list[str]] = {}
    model = to_finn(ModelWrapper(args.model))
    stages["finn"] = [n.op_type for n in model.graph.node]
    streamlined = streamline(model)
    stages["streamlined"] = [n.op_type for n in streamlined.graph.node]
    hw = to_hw(streamlined)
    stages["hw"] = [n.op_type for n in hw.graph.node]
    layers: list[dict[str, Any]] = []
    stages["dataflow"] = []
    with tempfile.TemporaryDirectory() as tmp:
        parent, parts, between = dataflow_partition(hw, tmp, args.segments)
        for k, part in enumerate(parts):  # each folded for the same frame rate
            folded = fold(part, args.fpga_part, target)
            stages["dataflow"] += [n.op_type for n in folded.graph.node]
            layers += [{**row, "segment": k} for row in layer_report(folded, args.fpga_part)]
    report = {"finn": "finn-plus " + _version("finn-plus"), "fpga_part": args.fpga_part,
              "clock_mhz": args.clock_mhz, "target_fps": args.target_fps,
              "target_cycles": target, "stages": stages, "layers": layers,
              "segments": len(parts), "between": between,
              "outside": [n.op_type for n in parent.graph.node
                          if n.op_type != "StreamingDataflowPartition"]}
    if args.inputs:
        x = np.load(args.inputs)
        res = {f"streamlined_{k}": v for k, v in run(streamlined, x).items()}
        res.update({f"hw_{k}": v for k, v in run(hw, x).items()})
        np.savez(args.outputs, **res)
    with open(args.report, "w") as f:
        json.dump(report, f, indent=1)
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main())
