"""Backend kernels: native code for one framework's arrays, beside the generic layer.

Each module imports its framework, the generic layer (``crossent._generic``) and the checks
below it, never a module above, and declares ``KERNELS``: a dict from the generic functions it
replaces to its kernels, which take the same arguments. Only the dispatcher
(``crossent._dispatch``) imports these modules, on the first call with that framework's arrays.
"""
