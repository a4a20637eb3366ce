"""Deploy targets of a compiled engine program: C99 (and Cortex-M builds), ONNX, QONNX for
FINN, and the FINN dataflow (FPGA) estimate. The engine (:mod:`bnnprune.engine`) compiles and
runs programs; this package turns them into files for other runtimes."""

from bnnprune.deploy.cexport import c_footprint, export_c
from bnnprune.deploy.onnx_export import export_onnx
from bnnprune.deploy.qonnx_export import export_qonnx

__all__ = ["c_footprint", "export_c", "export_onnx", "export_qonnx"]
