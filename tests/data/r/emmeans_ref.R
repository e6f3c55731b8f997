# Estimated marginal means and their pairwise contrasts from emmeans, for tests/test_emmeans.py.
# Run from tests/data/r:  Rscript emmeans_ref.R
# (writes ../emmeans_twoway.csv, a small simulated two-factor design, and ../emmeans_reference.json)
suppressMessages({library(lmerTest); library(emmeans); library(jsonlite)})
d <- "../../../jaxlmm/datasets/data"
# Factor levels in C-locale sorted order, as formulaic orders them.
as_factor <- function(x) factor(x, levels=sort(unique(x), method="radix"))

# Two-factor design: treat (between subjects) x period (within), 2 replicates per cell and subject,
# a numeric covariate x. Balanced.
set.seed(13)
tw <- expand.grid(rep=1:2, period=1:3, subject=sprintf("s%02d", 1:12), stringsAsFactors=FALSE)
tw$treat <- c("A", "B", "C")[(as.integer(sub("s", "", tw$subject)) - 1) %/% 4 + 1]
tw$x <- round(rnorm(nrow(tw), 10, 2), 3)
u <- rnorm(12, 0, 1.5)[as.integer(sub("s", "", tw$subject))]
cell <- c(A=0, B=1, C=-0.5)[tw$treat] + c(0, 0.8, 1.2)[tw$period] + ifelse(tw$treat == "B", 0.6 * (tw$period - 1), 0)
tw$y <- round(20 + cell + 0.3 * tw$x + u + rnorm(nrow(tw), 0, 1), 4)
tw <- tw[, c("subject", "treat", "period", "x", "y")]
write.csv(tw, "../emmeans_twoway.csv", row.names=FALSE)

dt <- read.csv(file.path(d, "dietox.csv"))
dt$Pig <- factor(dt$Pig); dt$Evit <- as_factor(dt$Evit); dt$Cu <- as_factor(dt$Cu)
od <- read.csv(file.path(d, "orthodont.csv")); od$Subject <- factor(od$Subject); od$Sex <- as_factor(od$Sex)
od$off <- od$age / 2 + (od$Subject == "M01")  # an offset (emmeans adds its mean over the fitted rows)
tw <- read.csv("../emmeans_twoway.csv")
tw$subject <- factor(tw$subject); tw$treat <- as_factor(tw$treat); tw$period <- factor(tw$period)

ctrl <- lmerControl(optimizer="bobyqa", optCtrl=list(rhobeg=0.2, rhoend=1e-12, maxfun=1e5), check.conv.grad="ignore")
# Each case: the lmer formula, and the emmeans specs (with optional `by` and `at`) to record.
cases <- list(
  list(id="dietox", data=dt, f=Weight ~ Time + Evit + Cu + (1|Pig), specs=list(
    list(specs="Evit"), list(specs="Cu"), list(specs=c("Evit", "Cu")), list(specs="Cu", by="Evit"))),
  list(id="orthodont", data=od, f=distance ~ age * Sex + (1|Subject), specs=list(
    list(specs="Sex"), list(specs="Sex", at=list(age=14)))),
  list(id="orthodont_offset", data=od, f=distance ~ Sex + (1|Subject), offset="off", specs=list(list(specs="Sex"))),
  list(id="twoway", data=tw, f=y ~ treat * period + x + (1|subject), specs=list(
    list(specs="treat"), list(specs="period"), list(specs="period", by="treat"), list(specs=c("treat", "period")),
    list(specs="treat", at=list(x=12))))
)
col <- function(frame, pattern) frame[[grep(pattern, names(frame))[1]]]
out <- list()
for (cs in cases) {
  .offset <- if (is.null(cs$offset)) NULL else cs$data[[cs$offset]]  # a name not in the data: lmer looks there first
  m <- suppressMessages(suppressWarnings(lmer(cs$f, data=cs$data, REML=TRUE, control=ctrl, offset=.offset)))
  entry <- list(formula=paste(deparse(cs$f), collapse=""), beta=unname(fixef(m)), results=list())
  for (sp in cs$specs) for (ddf in c("satterthwaite", "kenward-roger", "asymptotic")) {
    emm_options(lmer.df=ddf)
    emm <- suppressMessages(emmeans(m, specs=sp$specs, by=sp$by, at=if (is.null(sp$at)) list() else sp$at))
    s <- as.data.frame(summary(emm))
    res <- list(specs=sp$specs, by=sp$by, at=sp$at, ddf=ddf,
                levels=lapply(s[c(sp$specs, sp$by)], as.character),
                emmean=s$emmean, SE=s$SE, df=s$df, lower=col(s, "lower|LCL"), upper=col(s, "upper|UCL"))
    for (adj in c("tukey", "holm")) {
      p <- as.data.frame(summary(pairs(emm, adjust=adj)))
      res[[paste0("pairs_", adj)]] <- list(contrast=as.character(p$contrast),
        by=if (is.null(sp$by)) NULL else as.character(p[[sp$by]]),
        estimate=p$estimate, SE=p$SE, df=p$df, ratio=col(p, "ratio"), p=p$p.value)
    }
    entry$results[[length(entry$results) + 1]] <- res
  }
  out[[cs$id]] <- entry
}
write(toJSON(out, auto_unbox=TRUE, digits=NA, pretty=TRUE), "../emmeans_reference.json")
