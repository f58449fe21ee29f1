"""What the authors' published code computes where it departs from the paper.

The paper path of each method lives in its own module and reads without these
variants. The modules here reproduce the published code's behaviour, as a
reproduction aid: a user reaches them through the documented switch of each
method (``reference_compat=True`` for AngularGrad and GAL,
``secant="iterate"`` for SP), and the design document (``docs/design.md``)
lists every departure.
"""

__all__: list[str] = []  # the variants live in the submodules, one per method
