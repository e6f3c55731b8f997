# Run from tests/data/r:  Rscript weights_profile_ref.R   (writes ../weights_profile_reference.json)
# lme4's profile intervals of a model with prior weights (sleepstudy_wo.csv, written by issue13_resid_ref.R).
suppressMessages({library(lme4); library(jsonlite)})
d <- read.csv("../sleepstudy_wo.csv"); d$Subject <- factor(d$Subject)
m <- lmer(Reaction ~ Days + (Days | Subject), d, weights = w, REML = FALSE,
          control = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12)))
ci <- confint(m, method = "profile", oldNames = FALSE)
write(toJSON(list(names = rownames(ci), lower = unname(ci[, 1]), upper = unname(ci[, 2]),
                  loglik = as.numeric(logLik(m))), digits = NA, pretty = TRUE),
      "../weights_profile_reference.json")
