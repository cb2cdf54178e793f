"""The generic layer: every loss and its gradient, written with the Array API standard alone.

Nothing here names a public function, and nothing imports the dispatcher or a backend kernel:
the public modules above prepare the arguments into a problem (:mod:`._problems`) and hand it
to the functions here, or to a kernel registered for one of them (``crossent._backends``).

- ``_arrays``: the few helpers that ask which framework an array belongs to.
- ``_stable``: numerically stable pieces shared by the families (the max shift, ``log`` of a
  sum, softplus, clipping).
- ``_problems``: a call's checked arguments in canonical form (``Classes``, ``Pointwise``) and
  the reductions.
- ``_softmax``, ``_categorical``, ``_binary``, ``_divergence``: the math of each family, its
  one-pass loss and gradient, and the functions the dispatcher runs.
"""
