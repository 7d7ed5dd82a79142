"""The reference's ``models``: the same modules as ``kdzoo.models`` (see kdzoo/_reference_names.py)."""
from kdzoo._reference_names import alias

alias(__name__)
