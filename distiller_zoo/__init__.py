"""The reference's ``distiller_zoo``: the same modules as ``kdzoo.distiller_zoo`` (see kdzoo/_reference_names.py)."""
from kdzoo._reference_names import alias

alias(__name__)
