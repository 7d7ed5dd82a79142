"""Where the reference code kept the distillation helper modules (``from models.util import
ConvReg``); they live next to their losses in ``distiller_zoo`` and are re-exported here."""
from kdzoo.distiller_zoo import Connector, ConvReg, LinearEmbed, Paraphraser, Translator

__all__ = ["ConvReg", "LinearEmbed", "Connector", "Paraphraser", "Translator"]
