# Reference values for residual-variance structures (nlme varIdent / varExp) and for lme4 prior
# weights and offsets (issue 13).
# Run from tests/data/r:  Rscript issue13_resid_ref.R
# Writes ../sessions_5.csv, ../sessions_60.csv, ../varexp.csv, ../sleepstudy_wo.csv and
# ../resid_variance_reference.json.  Every model is fitted to the CSV as read back from disk
# (values rounded to 6 significant digits before writing).
#
# Parameterisations:
#  * nlme varIdent(form = ~1|session): sd_i = sigma * ratio[session_i], ratio["t1"] = 1.
#    With residual variance sigma^2 exp(d_i' delta), d_i treatment-coded session dummies (t1 the
#    reference), exp(delta_s) = ratio_s^2, i.e. delta_s = 2 log(ratio_s).
#  * nlme varExp(form = ~x): sd_i = sigma * exp(t x_i); as sigma^2 exp(delta x_i), delta = 2 t.
#  * "reopt": an independent maximisation (optim BFGS, then Nelder-Mead polish) of the same
#    (RE)ML log-likelihood written out here, started from the nlme estimate; loglik_best is the
#    larger of nlme's and the re-optimised value.
suppressMessages({library(nlme); library(lme4); library(jsonlite)})
out <- list()
wr <- function(df, f) { write.csv(df, file.path("..", f), row.names=FALSE); read.csv(file.path("..", f)) }
mat <- function(m) { m <- as.matrix(m); list(names=rownames(m), values=unname(m)) }

## ---------------------------------------------------------------- data
sim_sessions <- function(nsub, seed) {
  set.seed(seed)
  ses <- c("t1", "t2", "t3", "t4")
  eff <- c(0, 1, 0.5, -0.5); sds <- c(1, 2, 0.7, 1.5)
  subj <- sprintf("s%02d", seq_len(nsub))
  d <- expand.grid(rep=1:3, session=ses, subject=subj, stringsAsFactors=FALSE)[, c("subject", "session")]
  n <- nrow(d); si <- match(d$session, ses)
  b0 <- rnorm(nsub, 0, 2)[match(d$subject, subj)]
  b1 <- rnorm(nsub, 0, 0.5)[match(d$subject, subj)]   # random slope (for the ~1 + x | subject fit)
  d$x <- signif(rnorm(n), 6)
  d$y <- signif(10 + 0.5 * d$x + eff[si] + b0 + b1 * d$x + rnorm(n, 0, sds[si]), 6)
  d
}
s5 <- wr(sim_sessions(5, 1305), "sessions_5.csv")
s60 <- wr(sim_sessions(60, 1360), "sessions_60.csv")
for (nm in c("s5", "s60")) { d <- get(nm); d$subject <- factor(d$subject); d$session <- factor(d$session, levels=c("t1","t2","t3","t4")); assign(nm, d) }

set.seed(1313)
nsub <- 40; subj <- sprintf("s%02d", seq_len(nsub))
ve <- data.frame(subject=rep(subj, each=6))
ve$x <- signif(runif(nrow(ve), 0, 3), 6)
ve$y <- signif(5 + 1.2 * ve$x + rnorm(nsub, 0, 1.5)[match(ve$subject, subj)] +
               rnorm(nrow(ve), 0, 0.8 * exp(0.4 * ve$x)), 6)
ve <- wr(ve, "varexp.csv"); ve$subject <- factor(ve$subject)

ss <- lme4::sleepstudy
ss$w <- 1 + (ss$Days %% 3) / 2
ss$o <- 2.5 * ss$Days + (as.integer(ss$Subject) %% 2)
ss <- wr(ss[, c("Reaction", "Days", "Subject", "w", "o")], "sleepstudy_wo.csv")
ss$Subject <- factor(ss$Subject)

## ---------------------------------------------------------------- independent (RE)ML likelihood
# theta: c(log sigma, variance-function params (log ratios for t2..t4 | t), RE chol: log diag / offdiag)
mk_ll <- function(y, X, Z, g, vf, nvf, q, reml) {
  idx <- split(seq_along(y), g); n <- length(y); p <- ncol(X)
  unpack <- function(th) {
    L <- matrix(0, q, q); L[lower.tri(L, diag=TRUE)] <- th[-(1:(1 + nvf))]
    diag(L) <- exp(diag(L))
    list(s2=exp(2 * th[1]), vw=vf(th[1 + seq_len(nvf)]), G=L %*% t(L))
  }
  f <- function(th) {
    u <- unpack(th)
    XVX <- matrix(0, p, p); XVy <- numeric(p); ldet <- 0; Vi_l <- list()
    for (k in seq_along(idx)) {
      i <- idx[[k]]; Zi <- Z[i, , drop=FALSE]
      V <- Zi %*% u$G %*% t(Zi) + diag(u$s2 * u$vw[i], length(i))
      R <- chol(V); ldet <- ldet + 2 * sum(log(diag(R)))
      Xi <- backsolve(R, X[i, , drop=FALSE], transpose=TRUE); yi <- backsolve(R, y[i], transpose=TRUE)
      XVX <- XVX + crossprod(Xi); XVy <- XVy + crossprod(Xi, yi); Vi_l[[k]] <- list(Xi=Xi, yi=yi)
    }
    beta <- solve(XVX, XVy); rss <- 0
    for (v in Vi_l) rss <- rss + sum((v$yi - v$Xi %*% beta)^2)
    if (reml) -0.5 * ((n - p) * log(2 * pi) + ldet + as.numeric(determinant(XVX)$modulus) + rss)
    else -0.5 * (n * log(2 * pi) + ldet + rss)
  }
  list(f=f, unpack=unpack)
}
reopt <- function(ll, th0) {
  o1 <- optim(th0, function(t) -ll$f(t), method="BFGS", control=list(reltol=1e-15, maxit=2000))
  o2 <- optim(o1$par, function(t) -ll$f(t), method="Nelder-Mead", control=list(reltol=1e-15, maxit=20000))
  o <- if (o2$value < o1$value) o2 else o1
  u <- ll$unpack(o$par)
  list(loglik=-o$value, theta=o$par, sigma=sqrt(u$s2), re_cov=u$G, convergence=c(o1$convergence, o2$convergence))
}

## ---------------------------------------------------------------- nlme fits
re_info <- function(m) {
  G <- unclass(getVarCov(m)); attr(G, "group.levels") <- NULL
  G <- G[, , drop=FALSE]
  list(re_cov=mat(G), re_sd=unname(sqrt(diag(G))),
       re_cor=if (nrow(G) > 1) unname(cov2cor(G)[2, 1]) else NULL)
}
ctrl_std <- lmeControl(maxIter=200, msMaxIter=200, niterEM=25, opt="nlminb", returnObject=TRUE, msVerbose=TRUE)
ctrl_str <- "lmeControl(maxIter=200, msMaxIter=200, niterEM=25, opt='nlminb', returnObject=TRUE, msVerbose=TRUE) (msVerbose only to count nlminb iterations)"

fit_nlme <- function(id, fixed, random, weights, data, method, kind) {
  warns <- character(0)
  trace <- capture.output(m <- withCallingHandlers(
    do.call(lme, list(fixed=fixed, random=random, weights=weights, data=data, method=method, control=ctrl_std)),
    warning=function(w) { warns <<- c(warns, conditionMessage(w)); invokeRestart("muffleWarning") }))
  it <- as.integer(sub("^ *([0-9]+):.*", "\\1", grep("^ *[0-9]+:", trace, value=TRUE)))
  conv <- length(warns) == 0
  vs <- coef(m$modelStruct$varStruct, unconstrained=FALSE, allCoef=TRUE)
  # the same likelihood, independently, started at nlme's estimate
  y <- data$y; X <- model.matrix(fixed, data)
  Z <- model.matrix(as.formula(call("~", random[[2]][[2]])), data)
  q <- ncol(Z); G <- unclass(getVarCov(m))[, , drop=FALSE]; Lc <- t(chol(G))
  th_re <- { l <- Lc; diag(l) <- log(diag(l)); l[lower.tri(l, diag=TRUE)] }
  if (kind == "varIdent") {
    lev <- levels(data$session); si <- as.integer(data$session)
    vf <- function(t) exp(2 * c(0, t))[si]; nvf <- length(lev) - 1
    th0 <- c(log(m$sigma), log(vs[lev[-1]]), th_re)
  } else {
    vf <- function(t) exp(2 * t * data$x); nvf <- 1
    th0 <- c(log(m$sigma), vs[["expon"]], th_re)
  }
  ll <- mk_ll(y, X, Z, data$subject, vf, nvf, q, method == "REML")
  ll_at <- ll$f(th0)
  ro <- reopt(ll, th0)
  vpar <- ro$theta[1 + seq_len(nvf)]
  rep <- c(list(
    package="nlme", call=paste(deparse(m$call), collapse=""),
    model=list(fixed=deparse(fixed), random=deparse(random), weights=deparse(m$call$weights)),
    method=method, control=ctrl_str, nobs=nrow(data),
    converged=conv, warnings=warns, nlminb_iterations=max(it), nlminb_runs=sum(it == 0L),
    outer_iterations=m$numIter,
    apVar_ok=!is.character(m$apVar),
    loglik=as.numeric(logLik(m)), loglik_own_formula_at_estimate=ll_at,
    fixef=as.list(fixef(m)), vcov=mat(vcov(m)), sigma=m$sigma,
    varstruct=as.list(vs)), re_info(m),
    list(reopt=list(
      method="optim BFGS then Nelder-Mead (reltol 1e-15) on the profiled (RE)ML log-likelihood, from nlme's estimate",
      loglik=ro$loglik, sigma=ro$sigma,
      varstruct=if (kind == "varIdent") as.list(setNames(c(1, exp(vpar)), levels(data$session))) else list(expon=vpar),
      re_cov=unname(ro$re_cov), optim_convergence=ro$convergence),
    loglik_best=max(as.numeric(logLik(m)), ro$loglik)))
  if (kind == "varIdent") rep$delta_engineer <- as.list(2 * log(vs[-1]))
  else rep$delta_engineer <- list(x=2 * vs[["expon"]])
  out[[id]] <<- rep
  invisible(m)
}

vi <- varIdent(form = ~1 | session)
for (meth in c("REML", "ML")) {
  fit_nlme(paste0("nlme_varident_sessions5_", tolower(meth)), y ~ x + session, ~1 | subject, vi, s5, meth, "varIdent")
  fit_nlme(paste0("nlme_varident_sessions60_", tolower(meth)), y ~ x + session, ~1 | subject, vi, s60, meth, "varIdent")
  fit_nlme(paste0("nlme_varexp_", tolower(meth)), y ~ x, ~1 | subject, varExp(form = ~x), ve, meth, "varExp")
}
fit_nlme("nlme_varident_slope_sessions60_reml", y ~ x + session, ~1 + x | subject, vi, s60, "REML", "varIdent")

## ---------------------------------------------------------------- lme4 weights / offset
ctrl4 <- lmerControl(optimizer="bobyqa", optCtrl=list(rhobeg=0.2, rhoend=1e-12, maxfun=1e5), check.conv.grad="ignore")
ctrl4_str <- "lmerControl(optimizer='bobyqa', optCtrl=list(rhobeg=0.2, rhoend=1e-12, maxfun=1e5), check.conv.grad='ignore')"
nd <- data.frame(Days=c(0, 5), Subject=c("308", "new"), o=c(1, 2), w=c(1, 1))
fit_lme4 <- function(id, f, reml, w=FALSE, o=FALSE) {
  args <- list(formula=f, data=ss, REML=reml, control=ctrl4)
  if (w) args$weights <- quote(w)
  if (o) args$offset <- quote(o)
  m <- suppressMessages(suppressWarnings(do.call(lmer, args)))
  vc <- as.data.frame(VarCorr(m))
  rep <- list(package="lme4", formula=paste(deparse(f), collapse=""), weights=if (w) "w" else NULL,
    offset=if (o) "o" else NULL, REML=reml, control=ctrl4_str, nobs=nobs(m),
    loglik=as.numeric(logLik(m)), deviance=if (!reml) deviance(m) else NULL,
    REMLcrit=if (reml) as.numeric(REMLcrit(m)) else NULL, objective=as.numeric(m@devcomp$cmp[if (reml) "REML" else "dev"]),
    fixef=as.list(fixef(m)), vcov=mat(vcov(m)), theta=unname(getME(m, "theta")), sigma=sigma(m),
    varcorr=list(grp=vc$grp, var1=vc$var1, var2=vc$var2, vcov=vc$vcov, sdcor=vc$sdcor),
    fitted_1_6=unname(fitted(m)[1:6]), resid_response_1_6=unname(residuals(m, type="response")[1:6]),
    resid_pearson_1_6=unname(residuals(m, type="pearson")[1:6]),
    pearson_is_sqrtw_times_response=isTRUE(all.equal(unname(residuals(m, type="pearson")),
      unname(residuals(m, type="response") * sqrt(if (w) ss$w else 1)))))
  if (o) {
    rep$predict_newdata <- list(newdata=nd,
      conditional=unname(predict(m, newdata=nd, allow.new.levels=TRUE)),
      population=unname(predict(m, newdata=nd, re.form=NA)),
      note="predict(m, newdata=nd, allow.new.levels=TRUE) and predict(m, newdata=nd, re.form=NA); offset column o of newdata, see offset_in_predict")
    b <- fixef(m); re <- ranef(m)$Subject["308", ]
    lin_pop <- b[1] + b[2] * nd$Days
    lin_cond <- lin_pop + c(re[[1]] + if (ncol(re) > 1) re[[2]] * nd$Days[1] else 0, 0)
    rep$offset_in_predict <- list(
      population_without_offset=unname(lin_pop), conditional_without_offset=unname(lin_cond),
      newdata_offset_added_population=isTRUE(all.equal(unname(predict(m, newdata=nd, re.form=NA)), unname(lin_pop) + nd$o)),
      newdata_offset_added_conditional=isTRUE(all.equal(unname(predict(m, newdata=nd, allow.new.levels=TRUE)), unname(lin_cond) + nd$o)),
      formula_offset_predict=local({
        f2 <- update(f, . ~ . + offset(o)); a2 <- args; a2$formula <- f2; a2$offset <- NULL
        m2 <- suppressMessages(suppressWarnings(do.call(lmer, a2)))
        list(model=paste(deparse(f2), collapse=""), loglik=as.numeric(logLik(m2)),
             conditional=unname(predict(m2, newdata=nd, allow.new.levels=TRUE)),
             population=unname(predict(m2, newdata=nd, re.form=NA)))
      }),
      fitted_includes_offset=isTRUE(all.equal(unname(fitted(m)), unname(drop(getME(m, "X") %*% fixef(m)) + drop(t(getME(m, "Zt")) %*% getME(m, "b")) + ss$o))))
  }
  out[[id]] <<- rep
  invisible(m)
}
fs <- Reaction ~ Days + (Days | Subject)
for (reml in c(TRUE, FALSE)) {
  sfx <- if (reml) "_reml" else "_ml"
  fit_lme4(paste0("lme4_sleepstudy_weights", sfx), fs, reml, w=TRUE)
  fit_lme4(paste0("lme4_sleepstudy_offset", sfx), fs, reml, o=TRUE)
  fit_lme4(paste0("lme4_sleepstudy_weights_offset", sfx), fs, reml, w=TRUE, o=TRUE)
}
fit_lme4("lme4_sleepstudy_int_weights_reml", Reaction ~ Days + (1 | Subject), TRUE, w=TRUE)

# Weighted log-likelihood check: the weighted model is the unweighted model fitted to sqrt(w)-scaled
# y, X and Z; deviance(weighted) = deviance(scaled) - sum(log(w)) (same for the REML criterion).
chk <- list()
for (reml in c(FALSE, TRUE)) {
  mw <- suppressMessages(lmer(fs, data=ss, REML=reml, weights=w, control=ctrl4))
  lf <- lFormula(fs, data=ss, REML=reml)
  sw <- sqrt(ss$w)
  lf$X <- lf$X * sw
  lf$reTrms$Zt <- lf$reTrms$Zt %*% Matrix::Diagonal(x=sw)
  lf$fr$Reaction <- lf$fr$Reaction * sw
  dfun <- do.call(mkLmerDevfun, c(lf, list(control=ctrl4)))
  opt <- optimizeLmer(dfun, optimizer="bobyqa", control=list(rhobeg=0.2, rhoend=1e-12, maxfun=1e5))
  crit_w <- as.numeric(if (reml) REMLcrit(mw) else deviance(mw))
  chk[[if (reml) "reml" else "ml"]] <- list(criterion_weighted=crit_w, criterion_scaled=opt$fval,
    sum_log_w=sum(log(ss$w)), scaled_minus_sum_log_w=opt$fval - sum(log(ss$w)),
    difference=crit_w - (opt$fval - sum(log(ss$w))),
    theta_weighted=unname(getME(mw, "theta")), theta_scaled=opt$par)
}
out$lme4_weights_loglik_check <- c(list(
  description="lmer(Reaction ~ Days + (Days|Subject), weights=w) vs the unweighted model on sqrt(w)*y, sqrt(w)*X, sqrt(w)*Z: criterion_weighted == criterion_scaled - sum(log(w)), i.e. logLik_weighted = logLik_scaled + 0.5*sum(log(w))"),
  chk)

out$`_meta` <- list(R=R.version.string, lme4=as.character(packageVersion("lme4")),
  nlme=as.character(packageVersion("nlme")), script="tests/data/r/issue13_resid_ref.R",
  notes=c("nlme varIdent: sd_i = sigma*ratio[session]; engineer's delta_s = 2*log(ratio_s) (stored as delta_engineer)",
          "nlme varExp: sd_i = sigma*exp(expon*x); engineer's delta = 2*expon",
          "lme4 residuals(type='pearson') for lmer = sqrt(w)*response residual, NOT divided by sigma",
          "lme4 predict(newdata) ignores an offset given via lmer(offset=) but includes offset(o) in the formula; fitted() includes the offset either way"))
write(toJSON(out, auto_unbox=TRUE, digits=NA, pretty=TRUE, null="null"), "../resid_variance_reference.json")
cat("wrote", length(out), "entries\n")
