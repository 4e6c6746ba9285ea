"""Study files: the named, versioned declaration of one search (studyfile), its sampler and pruner
(samplers) and the seed reports' claims it tests (claims)."""
