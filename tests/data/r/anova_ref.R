# lmerTest anova (types 3/2/1, Satterthwaite and Kenward-Roger) and pbkrtest Kenward-Roger references.
# Run from tests/data/r:  Rscript anova_ref.R
# Writes ../anova_nested.csv and ../anova_rm.csv (simulated designs) and ../anova_reference.json.
# All fits are REML with treatment contrasts (R's default; the first sorted level is the reference, as
# formulaic's C()). The string columns of the CSVs are read as factors, which formulaic also does.
suppressMessages({library(lmerTest); library(pbkrtest); library(jsonlite)})
options(contrasts = c("contr.treatment", "contr.poly"))
d <- "../../../jaxlmm/datasets/data"

# (a) nested: batches nested in suppliers, casks nested in batches, a method factor within casks; some
# rows dropped so that the design is unbalanced (types 1, 2 and 3 differ).
set.seed(13)
nested <- expand.grid(rep = 1:2, method = c("m1", "m2"), cask = c("a", "b", "c"), batch = sprintf("b%02d", 1:12),
                      stringsAsFactors = FALSE)
nested$supplier <- c("s1", "s2", "s3")[(as.integer(factor(nested$batch)) - 1) %% 3 + 1]
nested$cask <- paste(nested$batch, nested$cask, sep = ":")
b <- rnorm(12, sd = 1.5)[as.integer(factor(nested$batch))]
k <- rnorm(36, sd = 1)[as.integer(factor(nested$cask))]
nested$y <- round(20 + c(s1 = 0, s2 = 1, s3 = -0.5)[nested$supplier] + 0.8 * (nested$method == "m2") +
                  0.6 * (nested$method == "m2" & nested$supplier == "s3") + b + k + rnorm(nrow(nested), sd = 0.7), 4)
nested <- nested[-sample(nrow(nested), 17), c("y", "supplier", "batch", "cask", "method")]
write.csv(nested, "../anova_nested.csv", row.names = FALSE)

# (c) balanced repeated measures: subjects in two groups, every subject under three conditions at four times.
set.seed(7)
rm <- expand.grid(time = 0:3, cond = c("c1", "c2", "c3"), subj = sprintf("p%02d", 1:12), stringsAsFactors = FALSE)
rm$group <- ifelse(as.integer(factor(rm$subj)) <= 6, "g1", "g2")
u <- rnorm(12, sd = 2)[as.integer(factor(rm$subj))]
v <- rnorm(36, sd = 1)[as.integer(factor(paste(rm$subj, rm$cond)))]
rm$y <- round(10 + 0.5 * rm$time + c(c1 = 0, c2 = 1, c3 = 0.3)[rm$cond] + 0.7 * (rm$group == "g2") +
              0.9 * (rm$group == "g2" & rm$cond == "c3") + u + v + rnorm(nrow(rm), sd = 0.8), 4)
rm <- rm[, c("y", "subj", "group", "cond", "time")]
write.csv(rm, "../anova_rm.csv", row.names = FALSE)

read <- function(path, factors) {
  x <- read.csv(path, stringsAsFactors = FALSE)
  for (f in factors) x[[f]] <- factor(x[[f]])
  x
}
designs <- list(
  nested = list(data = read("../anova_nested.csv", c("supplier", "batch", "cask", "method")),
                f = y ~ supplier * method + (1 | batch) + (1 | batch:cask)),
  dietox = list(data = read(file.path(d, "dietox.csv"), c("Pig", "Evit", "Cu")),
                f = Weight ~ Time * Evit + (Time | Pig)),
  rm = list(data = read("../anova_rm.csv", c("subj", "group", "cond")),
            f = y ~ group * cond + time + (1 | subj) + (1 | subj:cond)),
  orthodont = list(data = read(file.path(d, "orthodont.csv"), c("Subject", "Sex")),
                   f = distance ~ age * Sex + (age | Subject)),
  psycholing = list(data = read(file.path(d, "psycholing.csv"), c("subj", "item")),
                    f = rt ~ c + (1 + c | subj) + (1 | item)),
  penicillin = list(data = read(file.path(d, "penicillin.csv"), c("plate", "sample")),
                    f = diameter ~ 1 + (1 | plate) + (1 | sample))
)
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhobeg = 0.2, rhoend = 1e-12, maxfun = 1e5),
                    check.conv.grad = "ignore")
table_json <- function(a) list(terms = rownames(a), sum_sq = a[["Sum Sq"]], mean_sq = a[["Mean Sq"]],
                                num_df = a[["NumDF"]], den_df = a[["DenDF"]], f = a[["F value"]], p = a[["Pr(>F)"]],
                                hypotheses = lapply(attr(a, "hypotheses"), function(L) unname(as.matrix(L))))
coef_json <- function(co) list(terms = rownames(co), estimate = unname(co[, "Estimate"]), se = unname(co[, "Std. Error"]),
                               df = unname(co[, "df"]), t = unname(co[, "t value"]), p = unname(co[, "Pr(>|t|)"]))
out <- list()
for (id in names(designs)) {
  ds <- designs[[id]]
  m <- suppressMessages(suppressWarnings(lmer(ds$f, data = ds$data, REML = TRUE, control = ctrl)))
  vc <- as.data.frame(VarCorr(m))
  entry <- list(formula = deparse(ds$f), beta = unname(fixef(m)), names = names(fixef(m)),
                varcorr = vc$vcov, sigma2 = sigma(m)^2, loglik = as.numeric(logLik(m)),
                vcov = unname(as.matrix(vcov(m))), vcov_adj = unname(as.matrix(vcovAdj(m))),
                satterthwaite = coef_json(summary(m)$coefficients),
                kenward_roger = coef_json(summary(m, ddf = "Kenward-Roger")$coefficients))
  if (length(fixef(m)) > 1) {
    for (type in c(3, 2, 1)) for (ddf in c("Satterthwaite", "Kenward-Roger")) {
      key <- paste0("type", type, "_", if (ddf == "Satterthwaite") "satterthwaite" else "kenward_roger")
      entry[[key]] <- table_json(anova(m, type = type, ddf = ddf))
    }
  }
  out[[id]] <- entry
  cat(id, "done\n")
}
write(toJSON(out, digits = NA, pretty = TRUE, auto_unbox = TRUE), "../anova_reference.json")
