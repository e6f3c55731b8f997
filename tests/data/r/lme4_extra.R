# Extra lme4 references: Dyestuff2 (a singular fit) and Sitka (random slope, badly scaled time).
# Run from tests/data/r:  Rscript lme4_extra.R   (writes ../dyestuff2.csv and ../lme4_extra.json)
suppressMessages({library(lme4); library(jsonlite)})
write.csv(lme4::Dyestuff2, "../dyestuff2.csv", row.names=FALSE)
sitka <- read.csv("../../../jaxlmm/datasets/data/sitka.csv"); sitka$tree <- factor(sitka$tree)
cases <- list(
  list(id="dyestuff2", data=lme4::Dyestuff2, f=Yield ~ 1 + (1|Batch)),
  list(id="sitka_slope", data=sitka, f=size ~ Time + (Time|tree)),
  list(id="sitka_int", data=sitka, f=size ~ Time + (1|tree))
)
out <- list()
for (cs in cases) for (reml in c(TRUE, FALSE)) {
  msgs <- character(0)
  m <- withCallingHandlers(lmer(cs$f, data=cs$data, REML=reml),
         warning=function(w) {msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleWarning")},
         message=function(w) {msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleMessage")})
  vc <- as.data.frame(VarCorr(m))
  out[[paste0(cs$id, if (reml) "_reml" else "_ml")]] <- list(
    formula=paste(deparse(cs$f), collapse=""), reml=reml,
    fixef=as.list(fixef(m)), se=as.list(sqrt(diag(as.matrix(vcov(m))))),
    vcov_re=vc$vcov, sigma2=sigma(m)^2, theta=unname(getME(m, "theta")),
    loglik=as.numeric(logLik(m)), singular=isSingular(m), messages=msgs)
}
write(toJSON(out, auto_unbox=TRUE, digits=NA, pretty=TRUE), "../lme4_extra.json")
