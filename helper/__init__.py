"""The reference's ``helper``: the same modules as ``kdzoo.helper`` (see kdzoo/_reference_names.py)."""
from kdzoo._reference_names import alias

alias(__name__)
