"""Training: MoFA's model-based face autoencoder and the multi-level fine-tuning of Tewari et al. 2018.

The network (Fig. 1 of Tewari et al. 2018): a trainable convolutional **encoder**
(:func:`facelib.nets.make_encoder`) regresses the semantic code of :func:`facelib.mofa.multilevel.code_layout`
(pose, shape, expression, reflectance, illumination, and for the final level its own illumination and
the corrective coefficients delta_g, delta_r); the **decoder** is expert-designed and fixed: the
multi-level face model (:class:`facelib.mofa.multilevel.MultiLevelModel`, whose corrective bases are the
only trainable part) and the point-based image formation of Sec. 5 (:func:`facelib.render.points.render_points`)
for the base and the final level.  Training is self-supervised (:mod:`facelib.mofa.selfsup`): the input
image and its sparse landmarks are the only supervision.

Two stages (supplement Sec. 1): stage 1 trains the base level (MoFA, Tewari et al. 2017); stage 2
fine-tunes everything with the correctives, with the base network at a tenth of stage 1's learning
rate and the geometry / reflectance correctives at five / ten times that (the paper's 0.01 ->
0.001, 0.005, 0.01).  :func:`train` shows a progress bar, writes checkpoints and resumes from them.

Differences from the paper, all forced by a 2-core CPU and stated in the book: a narrow encoder
trained from scratch, 64-128 pixel inputs, a decimated template (:func:`facelib.mofa.multilevel.decimate`)
in the small profiles, Adam instead of AdaDelta, thousands instead of 390k iterations, and the
synthetic wild corpus (:mod:`facelib.data.wild`) instead of 144k photos.

The package in four modules, in the order a batch goes through them: :mod:`facelib.mofa.network`
(encoder, code, decoder), :mod:`facelib.mofa.data` (corpora, augmentation, checkpoint files),
:mod:`facelib.mofa.training` (the loss of a batch, the training loop, the book's runs) and
:mod:`facelib.mofa.evaluation` (renders, panels, error measures, speed); the multi-level model is
:mod:`facelib.mofa.multilevel` and the losses' terms :mod:`facelib.mofa.selfsup`.  Everything public
is importable from ``facelib.mofa``.
"""

from __future__ import annotations

from .data import PHOTO_MARGIN, checkpoint_dir, landmark_detector, make_corpus, photo_corpus, shift_scale
from .evaluation import (GREY_LIGHT, LANDMARK_VARIANTS, curve_eval, encoder_hz, evaluate, fit_codes, geometric_error,
                         landmark_variants_markdown, mark_points, mean_errors, mean_face_error, mean_face_now,
                         now_error_mm, panels, render_level)
from .network import (AMBIENT, CODE_SCALE, STAGE2_LR, CodeHeads, Decoded, MoFA, build_mofa, init_translation,
                      landmark_outputs, pretrain_branch)
from .training import (book_corpora, initial_network, learning_curve, loss_terms, settings_steps, stage1_config,
                       stage1_network, stage1_networks, stage1_start, stage2_network, stage2_networks, stage2_start,
                       train)

__all__ = [
    "STAGE2_LR",
    "CODE_SCALE",
    "AMBIENT",
    "PHOTO_MARGIN",
    "GREY_LIGHT",
    "CodeHeads",
    "Decoded",
    "MoFA",
    "build_mofa",
    "make_corpus",
    "landmark_detector",
    "photo_corpus",
    "init_translation",
    "landmark_outputs",
    "pretrain_branch",
    "shift_scale",
    "loss_terms",
    "train",
    "book_corpora",
    "stage1_config",
    "initial_network",
    "stage1_start",
    "stage1_network",
    "stage1_networks",
    "stage2_start",
    "stage2_network",
    "stage2_networks",
    "settings_steps",
    "render_level",
    "panels",
    "mark_points",
    "evaluate",
    "learning_curve",
    "mean_errors",
    "curve_eval",
    "mean_face_error",
    "geometric_error",
    "now_error_mm",
    "mean_face_now",
    "fit_codes",
    "encoder_hz",
    "LANDMARK_VARIANTS",
    "landmark_variants_markdown",
    "checkpoint_dir",
]
