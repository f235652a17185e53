"""SANA-Sprint distillation trainer (sCM + LADD): `python -m trainers.distill --config FILE`."""
