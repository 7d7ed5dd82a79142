"""The reference's ``dataset``: the same modules as ``kdzoo.dataset`` (see kdzoo/_reference_names.py)."""
from kdzoo._reference_names import alias

alias(__name__)
