"""Channel analysis and surgery: channel layouts (:mod:`.layout`), the groups of channels that
must be removed together (:mod:`.analysis`, driven by the op rules in :mod:`npcompile.rules`),
selection of what to remove (:mod:`.select`), the cost of a removal (:mod:`.cost`), masked
evaluation of removals (:mod:`.masked`) and the rewrite that applies one (:mod:`.rewrite`)."""
