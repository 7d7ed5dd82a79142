"""Contrastive distillation (CRD, WCoRD, RRD): see the README for status."""
