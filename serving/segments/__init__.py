"""Every kind of segment, one module each.

- :mod:`serving.segments.rules`: economic-value segments, rules over the scores (value tier x risk x
  potential) with frozen, versioned tier cut-offs, and the suppression rules.
- :mod:`serving.segments.macro`: macro segments, needs-based groups found from behaviour (the
  ``macro_segment`` family), assigned with the frozen model of the dataset.
- :mod:`serving.segments.micro`: micro segments by response to a marketing action (uplift) and the next
  best action.
- :mod:`serving.segments.lookalike`: look-alike audiences of a seed.
- :mod:`serving.segments.refresh`: re-scoring as of a new date, transitions, change files and history;
  :mod:`serving.segments.delivery` delivers the changes to a webhook.

Nothing is imported here, so that importing one kind does not import the others.
"""
