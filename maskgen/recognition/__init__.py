"""The recogniser: SphereFace networks, margin heads and a compact trainer (PyTorch).

torch is an optional extra (`pip install maskgen[recognition]`) and is imported only inside
this package; importing `maskgen.recognition` itself (or `.commands`) does not import it.

Colour order: every image fed to these networks is RGB, pixels (x - 127.5) / 128, 112x96
(h x w) for the SphereFace template. The dataset converts BGR decodes to RGB once.
"""
