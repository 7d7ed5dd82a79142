"""kd-zoo: knowledge distillation for PyTorch (CRD, WCoRD, RRD and the classic distiller zoo).

Import the library under this one name (``from kdzoo.models import model_dict``,
``from kdzoo.distiller_zoo import DistillKL``) so that it never collides with a user's own
``models``, ``dataset`` or ``helper`` package. Inside a checkout, the reference code's top-level
names (``models``, ``dataset``, ``helper``, ``distiller_zoo``, ``crd``) still work: they are the
same module objects as the ``kdzoo.*`` ones (see ``kdzoo/_reference_names.py``).
"""
__version__ = "0.1.0"
