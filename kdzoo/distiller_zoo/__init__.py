"""Distillation losses with the reference's class names, arguments and forward signatures.

Each is a torch-only ``nn.Module``: ``from distiller_zoo import Attention`` works without the
training code. The method table that drives ``train_student.py`` is ``distiller_zoo.registry``.
"""
from .AB import ABLoss, Connector
from .AT import Attention
from .CC import Correlation, LinearEmbed
from .DIST import DIST
from .DKD import DKD
from .FitNet import ConvReg, HintLoss
from .FSP import FSP
from .FT import FactorTransfer, Paraphraser, Translator
from .KD import DistillKL, standardize
from .KDSVD import KDSVD
from .NST import NSTLoss
from .OFD import OFDLoss, ofd_margin
from .PKT import PKT
from .ReviewKD import ABF, HCL, ReviewKD, hcl_loss
from .RKD import RKDLoss
from .SP import Similarity
from .VID import VIDLoss

__all__ = [
    "ABLoss", "Attention", "Correlation", "DIST", "DKD", "DistillKL", "FSP", "FactorTransfer", "HintLoss", "NSTLoss",
    "PKT", "RKDLoss", "Similarity", "VIDLoss", "ConvReg", "LinearEmbed", "Connector", "Paraphraser", "Translator",
    "standardize", "ReviewKD", "ABF", "HCL", "hcl_loss", "OFDLoss", "ofd_margin", "KDSVD",
]
