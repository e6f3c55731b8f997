# lme4's profile-likelihood intervals (confint(profile(m))) and profile points, for tests/test_profile.py.
# Run from tests/data/r:  Rscript lme4_profile.R   (writes ../lme4_profile.json)
# lme4 profiles the ML deviance (profile.merMod calls refitML), also for REML fits.
suppressMessages({library(lme4); library(jsonlite)})
d <- "../../../jaxlmm/datasets/data"
ss <- read.csv(file.path(d, "sleepstudy.csv")); ss$Subject <- factor(ss$Subject)
dy <- read.csv(file.path(d, "dyestuff.csv")); dy$Batch <- factor(dy$Batch)
dy2 <- read.csv("../dyestuff2.csv"); dy2$Batch <- factor(dy2$Batch)
pen <- read.csv(file.path(d, "penicillin.csv")); pen$plate <- factor(pen$plate); pen$sample <- factor(pen$sample)
cases <- list(
  list(id="sleepstudy_slope", data=ss, f=Reaction ~ Days + (Days|Subject)),
  list(id="sleepstudy_uncorr", data=ss, f=Reaction ~ Days + (Days||Subject)),
  list(id="dyestuff", data=dy, f=Yield ~ 1 + (1|Batch)),
  list(id="dyestuff2_singular", data=dy2, f=Yield ~ 1 + (1|Batch)),
  list(id="penicillin_crossed", data=pen, f=diameter ~ 1 + (1|plate) + (1|sample))
)
out <- list()
for (cs in cases) {
  m <- lmer(cs$f, data=cs$data)
  res <- list()
  for (dc in c(8, 64)) {
    p <- profile(m, signames=FALSE, delta.cutoff=1/dc)
    ci <- confint(p, level=0.95)
    res[[paste0("delta_", dc)]] <- list(params=rownames(ci), lower=ci[, 1], upper=ci[, 2])
    if (dc == 8) {
      tab <- as.data.frame(p)
      pts <- lapply(split(tab, tab$.par), function(t) {
        nm <- as.character(t$.par[1]); list(param=nm, value=t[[nm]], zeta=t$.zeta)})
      res$points <- unname(pts)
    }
  }
  res$deviance_ml <- deviance(refitML(m))
  out[[cs$id]] <- res
}
write(toJSON(out, digits=NA, pretty=TRUE, auto_unbox=TRUE), "../lme4_profile.json")
