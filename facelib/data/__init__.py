"""Data: the synthetic training corpus (Sec. 5), the in-the-wild stand-in and real photos.

:mod:`.corpus` (rendered corpora, crops, network input), :mod:`.wild` (degraded faces with detail the
model cannot express), :mod:`.photos` (photos, landmark detection, crops).
"""
