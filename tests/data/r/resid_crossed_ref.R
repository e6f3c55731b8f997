# Run from tests/data/r:  Rscript resid_crossed_ref.R   (writes ../resid_crossed_reference.json)
# nlme's varIdent on crossed (Penicillin, as pdBlocked over one group) and nested (Pastes) random effects;
# the residual-variance factor alternates by row: "a" for rows 1, 3, 5, ..., "b" for rows 2, 4, 6, ...
suppressMessages({library(nlme); library(lme4); library(jsonlite)})
out <- list()
p <- Penicillin; p$half <- ifelse((seq_len(nrow(p)) - 1) %% 2 == 0, "a", "b"); p$one <- 1
for (method in c("REML", "ML")) {
  m <- lme(diameter ~ 1, random = list(one = pdBlocked(list(pdIdent(~ plate - 1), pdIdent(~ sample - 1)))),
           weights = varIdent(form = ~1 | half), data = p, method = method)
  out[[paste0("penicillin_", tolower(method))]] <- list(loglik = as.numeric(logLik(m)), sigma = m$sigma,
    ratio_b = unname(coef(m$modelStruct$varStruct, unconstrained = FALSE)))
}
pa <- Pastes; pa$h <- ifelse((seq_len(nrow(pa)) - 1) %% 2 == 0, "a", "b")
for (method in c("REML", "ML")) {
  m <- lme(strength ~ 1, random = ~1 | batch/cask, weights = varIdent(form = ~1 | h), data = pa, method = method)
  out[[paste0("pastes_", tolower(method))]] <- list(loglik = as.numeric(logLik(m)), sigma = m$sigma,
    ratio_b = unname(coef(m$modelStruct$varStruct, unconstrained = FALSE)))
}
write(toJSON(out, digits = NA, pretty = TRUE, auto_unbox = TRUE), "../resid_crossed_reference.json")
