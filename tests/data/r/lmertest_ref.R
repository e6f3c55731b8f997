# Satterthwaite degrees of freedom from lmerTest for the reference fits.
# Run from tests/data/r:  Rscript lmertest_ref.R   (writes ../lmertest_reference.json)
suppressMessages({library(lmerTest); library(jsonlite)})
d <- "../../../jaxlmm/datasets/data"
ss <- read.csv(file.path(d, "sleepstudy.csv")); ss$Subject <- factor(ss$Subject)
od <- read.csv(file.path(d, "orthodont.csv")); od$Subject <- factor(od$Subject)
dt <- read.csv(file.path(d, "dietox.csv")); dt$Pig <- factor(dt$Pig)
cases <- list(
  list(id="sleepstudy_slope", data=ss, f=Reaction ~ Days + (Days|Subject)),
  list(id="sleepstudy_int", data=ss, f=Reaction ~ Days + (1|Subject)),
  list(id="orthodont", data=od, f=distance ~ age*Sex + (age|Subject)),
  list(id="dietox_slope", data=dt, f=Weight ~ Time + (Time|Pig))
)
out <- list()
for (cs in cases) for (reml in c(TRUE, FALSE)) {
  m <- suppressMessages(suppressWarnings(lmer(cs$f, data=cs$data, REML=reml,
        control=lmerControl(optimizer="bobyqa", optCtrl=list(rhobeg=0.2, rhoend=1e-12, maxfun=1e5), check.conv.grad="ignore"))))
  co <- summary(m)$coefficients
  out[[paste0(cs$id, if (reml) "_reml" else "_ml")]] <- list(
    terms=rownames(co), estimate=co[, "Estimate"], se=co[, "Std. Error"], df=co[, "df"],
    t=co[, "t value"], p=co[, "Pr(>|t|)"], loglik=as.numeric(logLik(m)))
}
write(toJSON(out, digits=NA, pretty=TRUE), "../lmertest_reference.json")
