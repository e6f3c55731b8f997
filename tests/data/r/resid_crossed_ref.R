# Run from tests/data/r:  Rscript resid_crossed_ref.R   (writes ../resid_crossed_reference.json)
# nlme's varIdent on crossed (Penicillin, as pdBlocked over one group) and nested (Pastes) random effects,
# and lme4's prior weights and offset on them;
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
# lme4's prior weights (and an offset) on the same crossed and nested designs
p$w <- 1 + (seq_len(nrow(p)) %% 3) / 2; p$o <- (seq_len(nrow(p)) %% 4) / 10
m <- lmer(diameter ~ 1 + (1|plate) + (1|sample), p, weights = w, offset = o,
          control = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12)))
out$penicillin_weights_offset_reml <- list(loglik = as.numeric(logLik(m)), fixef = unname(fixef(m)))
pa$w <- 1 + (seq_len(nrow(pa)) %% 3) / 2
m <- lmer(strength ~ 1 + (1|batch/cask), pa, weights = w, REML = FALSE,
          control = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12)))
out$pastes_weights_ml <- list(loglik = as.numeric(logLik(m)), fixef = unname(fixef(m)))
write(toJSON(out, digits = NA, pretty = TRUE, auto_unbox = TRUE), "../resid_crossed_reference.json")
