"""Experiments on the tiny preset that the shipped recipe does not keep: probes of what a
next-shot model reads from its earlier shots, and teacher losses that tried to make it read the
character's shape. Findings and commands: docs/experiments.md. Nothing in shotstream/, benchmark/
or demo/ imports from here; the training CLI names its stages (identity_teacher, shape_classifier).

    identity_teacher.py   the teacher with four auxiliary identity losses
    shape_classifier.py   the frozen judge of identity_teacher's pixel-space shape loss
    context_use.py        does a bidirectional model read its earlier shots? (no sampling, minutes)
    true_history.py       what does it draw after the true earlier shots?
    stories.py            stories changed in one respect (the character recast, named, found)
"""
