"""The recogniser: SphereFace networks, margin heads and a compact trainer (PyTorch).

torch is an optional extra (`pip install maskgen[recognition]`) and is imported only inside
this package; importing `maskgen.recognition` itself (or `.commands`) does not import it.

Colour order: every image fed to these networks is RGB, pixels (x - 127.5) / 128
(nets.centre), 112x96 (h x w) for the SphereFace template. The dataset converts BGR decodes
to RGB once.

Beside them, dlib's pretrained face-recognition ResNet as an exact PyTorch port
(`dlib_resnet()`, maskgen.recognition.dlib_resnet): 150x150 dlib chips, RGB 0..255 in,
128-d out; weights read from face_recognition_models' .dat file. As a trainer backbone
(`model = "dlib-resnet"`, `init = "dlib-resnet"`: configs/dlib_resnet_finetune.toml) it takes
the centred input like the others and is fine-tuned from those weights.
"""


def dlib_resnet(pretrained: bool = True, **kwargs):
    """dlib's face-recognition ResNet as a torch nn.Module (N x 3 x 150 x 150 RGB 0..255 ->
    N x 128), its weights read from dlib_face_recognition_resnet_model_v1.dat; torch is
    imported only now. Once maskgen.recognition.dlib_resnet (the module) is imported it takes
    this name, and calling it does the same. Keywords: path, inputs (see there)."""
    from maskgen.recognition.dlib_resnet import dlib_resnet as build

    return build(pretrained, **kwargs)
