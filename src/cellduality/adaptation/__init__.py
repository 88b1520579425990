"""Label-free adaptation of a trained model to a user's own cells (``cellduality adapt``, issue #12).

:func:`adapt` poses the model's tasks on the user's unlabelled cells, prints whether the duality
reward can help there, runs duality GRPO and writes the adapted model. Heavy libraries are
imported inside the functions, so importing this package stays fast.
"""

from cellduality.adaptation.adapt import adapt, parse_duration

__all__ = ["adapt", "parse_duration"]
