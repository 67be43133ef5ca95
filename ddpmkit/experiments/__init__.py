"""The book's experiments, sized by the profile (``DDPMKIT_PROFILE``), one module per part
of the book:

* :mod:`.sizes`: how much each profile computes (:class:`~.sizes.BookSize`), plain-text
  tables and the committed benchmark results (every part);
* :mod:`.vector`: training, sampling, scoring and sweeps of the vector models
  (parts "Foundations" and "DDPM on 2-D data");
* :mod:`.images`: the shipped image models, guidance sweeps and their metrics, and the
  2-D guidance warm-up on the moons (part "Images").

Chapters call these functions instead of carrying their own training or evaluation loops,
so the numbers in every figure come from library code that the tests also exercise.
"""
