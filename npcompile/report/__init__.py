"""Reports and gates: the versioned JSON report and its Markdown summary (:mod:`.document`),
plots (:mod:`.plots`), the single-file HTML report (:mod:`.html`) and CI gates with JUnit output
(:mod:`.gates`)."""
