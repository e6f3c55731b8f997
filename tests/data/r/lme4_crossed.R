# lme4 references for crossed and partially crossed models; run in tests/data/r: Rscript lme4_crossed.R, then move
# lme4_crossed.json, scotssec.csv and pixel.csv to tests/data (gzip the CSVs). mlmRev gives ScotsSec, nlme Pixel.
suppressMessages({library(lme4); library(jsonlite); library(mlmRev); library(nlme)})
out <- list()
entry <- function(m, formula, t) {
  vc <- as.data.frame(VarCorr(m))
  list(formula = formula, reml = isREML(m), nobs = nobs(m), fixef = as.list(fixef(m)),
       se = as.list(sqrt(diag(as.matrix(vcov(m))))), varcorr = vc, sigma2 = sigma(m)^2,
       theta = unname(getME(m, "theta")), loglik = as.numeric(logLik(m)), time_s = t,
       feval = m@optinfo$feval)
}
fitit <- function(key, formula, data, reml) {
  t0 <- Sys.time(); m <- lmer(as.formula(formula), data, REML = reml); t <- as.numeric(Sys.time() - t0, units = "secs")
  out[[key]] <<- entry(m, formula, t); cat(key, t, sprintf("%.8f", logLik(m)), "\n")
}
data(ScotsSec); data(Pixel)
write.csv(ScotsSec, "scotssec.csv", row.names = FALSE)
px <- as.data.frame(Pixel); write.csv(px, "pixel.csv", row.names = FALSE)
fitit("scotssec_reml", "attain ~ verbal * sex + (1|primary) + (1|second)", ScotsSec, TRUE)
fitit("scotssec_ml", "attain ~ verbal * sex + (1|primary) + (1|second)", ScotsSec, FALSE)
fitit("pixel_reml", "pixel ~ day + I(day^2) + (day | Dog) + (1 | Side) + (1 | Side:Dog)", px, TRUE)
fitit("pixel_ml", "pixel ~ day + I(day^2) + (day | Dog) + (1 | Side) + (1 | Side:Dog)", px, FALSE)
ss <- sleepstudy; ss$Dayf <- factor(ss$Days)
fitit("sleep_crossed_reml", "Reaction ~ Days + (Days | Subject) + (1 | Dayf)", ss, TRUE)
ie <- read.csv("../insteval.csv.gz"); for (c in c("s","d","dept","service")) ie[[c]] <- factor(ie[[c]])
fitit("insteval_reml", "y ~ service + (1|s) + (1|d) + (1|dept)", ie, TRUE)
fitit("insteval_ml", "y ~ service + (1|s) + (1|d) + (1|dept)", ie, FALSE)
suppressMessages(library(lmerTest))
ms <- lmerTest::lmer(attain ~ verbal * sex + (1|primary) + (1|second), ScotsSec)
out[["scotssec_reml"]]$satterthwaite_df <- as.list(summary(ms)$coefficients[, "df"])
write(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE), "lme4_crossed.json")
