# Refit the single-grouping-factor reference models with lme4 at tight optimizer tolerances.
# Run from tests/data/r:  Rscript lme4_tight.R   (reads ../../../jaxlmm/datasets/data, writes lme4_tight.json)
suppressMessages({library(lme4); library(jsonlite)})
d <- "../../../jaxlmm/datasets/data"
rd <- function(f, ...) read.csv(file.path(d, f), ...)
ss <- rd("sleepstudy.csv"); ss$Subject <- factor(ss$Subject)
dy <- rd("dyestuff.csv")
dt <- rd("dietox.csv"); dt$Pig <- factor(dt$Pig)
od <- rd("orthodont.csv"); od$Subject <- factor(od$Subject)
cases <- list(
 list(id="sleepstudy_slope", data=ss, f=Reaction ~ Days + (Days|Subject)),
 list(id="sleepstudy_diag", data=ss, f=Reaction ~ Days + (1|Subject) + (0+Days|Subject)),
 list(id="sleepstudy_int", data=ss, f=Reaction ~ Days + (1|Subject)),
 list(id="dyestuff", data=dy, f=Yield ~ 1 + (1|Batch)),
 list(id="dietox_int", data=dt, f=Weight ~ Time + (1|Pig)),
 list(id="dietox_slope", data=dt, f=Weight ~ Time + (Time|Pig)),
 list(id="dietox_diag", data=dt, f=Weight ~ Time + (1|Pig) + (0+Time|Pig)),
 list(id="orthodont", data=od, f=distance ~ age*Sex + (age|Subject))
)
ctrl <- lmerControl(optimizer="bobyqa", optCtrl=list(rhobeg=0.2, rhoend=1e-12, maxfun=1e5), check.conv.grad="ignore")
out <- list()
for (cs in cases) for (reml in c(TRUE, FALSE)) {
  m <- suppressMessages(suppressWarnings(lmer(cs$f, data=cs$data, REML=reml, control=ctrl)))
  vc <- as.data.frame(VarCorr(m))
  out[[paste0(cs$id, if (reml) "_reml" else "_ml")]] <- list(
    formula=paste(deparse(cs$f), collapse=""), reml=reml,
    fixef=as.list(fixef(m)), se=as.list(sqrt(diag(as.matrix(vcov(m))))),
    vcov_re=vc$vcov, sigma2=sigma(m)^2, theta=unname(getME(m, "theta")),
    loglik=as.numeric(logLik(m)))
}
write(toJSON(out, auto_unbox=TRUE, digits=NA, pretty=TRUE), "../lme4_tight.json")
