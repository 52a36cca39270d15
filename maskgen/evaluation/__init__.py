"""Verification evaluation: a recogniser (a SphereFace checkpoint or dlib's pretrained ResNet)
on a pairs file from `maskgen pairs`, with the LFW protocol, reported as JSON, Markdown + ROC
PNG, and a table in the terminal. No torch here: checkpoints go through
maskgen.recognition.embeddings, imported only when a checkpoint is evaluated."""
