"""Model: the face model (Eq. 2-3), the open model's builder, loaders, the parameter layout and samplers, the detail model.

:mod:`.facemodel` (:class:`FaceModel`), :mod:`.open_model` (the procedurally built open model),
:mod:`.loaders` (Basel Face Model 2009, OBJ folders), :mod:`.params` (Eq. 1 layout, Sec. 5 sampling,
breeding), :mod:`.detail` (the fine-detail displacement model).
"""
