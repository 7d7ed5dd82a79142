"""The contrastive family: CRD with its NCE memory bank (or a queue), WCoRD and RRD.

Each loss is a torch-only ``nn.Module`` usable on its own; ``train_student.py --distill crd|rrd|wcord``
drives them through the method table in ``distiller_zoo/registry.py``.
"""
from .criterion import ContrastLoss, CRDLoss, Embed, Normalize
from .memory import ContrastMemory, QueueContrast
from .rrd import RRDLoss
from .sinkhorn import sinkhorn_log, sinkhorn_plan
from .wcord import WCORD_DEFAULTS, WCoRDLoss

__all__ = [
    "CRDLoss", "ContrastLoss", "ContrastMemory", "Embed", "Normalize", "QueueContrast", "RRDLoss",
    "WCoRDLoss", "WCORD_DEFAULTS", "sinkhorn_log", "sinkhorn_plan",
]
