"""Deploy targets of a compiled engine program: the .bnn file, C99 (and Cortex-M builds),
ONNX, QONNX for FINN, and the FINN dataflow (FPGA) estimate, as one family
(:mod:`~bnnprune.deploy.targets`: ``export(net, out, **options) -> ExportReport``), and one
way to get a program from a checkpoint, a .bnn file or a model (:mod:`~bnnprune.deploy.source`,
without the training package). The engine (:mod:`bnnprune.engine`) compiles and runs
programs; this package turns them into files for other runtimes."""

from bnnprune.deploy.cexport import c_footprint, export_c
from bnnprune.deploy.onnx_export import export_onnx
from bnnprune.deploy.qonnx_export import export_qonnx
from bnnprune.deploy.source import (
    Deployable,
    from_checkpoint,
    is_bnn_file,
    load_deployable,
    load_program,
)
from bnnprune.deploy.targets import (
    DEPLOY_TARGETS,
    EXPORT_FORMATS,
    DeployTarget,
    ExportReport,
    export,
    get_deploy_target,
)

__all__ = ["DEPLOY_TARGETS", "EXPORT_FORMATS", "DeployTarget", "Deployable", "ExportReport",
           "c_footprint", "export", "export_c", "export_onnx", "export_qonnx", "from_checkpoint",
           "get_deploy_target", "is_bnn_file", "load_deployable", "load_program"]
