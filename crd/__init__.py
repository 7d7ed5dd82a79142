"""The reference's ``crd``: the same modules as ``kdzoo.crd`` (see kdzoo/_reference_names.py)."""
from kdzoo._reference_names import alias

alias(__name__)
