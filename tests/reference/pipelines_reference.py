#!/usr/bin/env python3
"""Independent NumPy re-computation of the four pipelines (docs/design.md §5), for the plugin reference tests.

Usage: pipelines_reference.py CASES.json OUT.json
CASES.json: a list of {plugin, config, train, batch: {B, T, H, ce, ce_mask, target_mask, values?, ref_ce?,
rewards?, pair_ids?}} (flat arrays as in the WIT contract). OUT.json: a list of {ce, values, loss}.
Written from the formulas of design.md §5, not from the Rust code. Plugin state is the initial one (fresh plugin).
"""
import json
import sys

import numpy as np


def unpack(b):
    B, T, H = b["B"], b["T"], b["H"]
    ce = np.array(b["ce"], np.float64).reshape(B, T, H)
    M = np.array(b["ce_mask"], np.float64).reshape(B, T, H)
    m = np.array(b["target_mask"], np.float64).reshape(B, T)
    get = lambda k, shape: None if b.get(k) is None else np.array(b[k], np.float64).reshape(shape)
    return B, T, H, ce, M, m, get("values", (B, T)), get("ref_ce", (B, T)), get("rewards", (B,)), b.get("pair_ids")


def weighted_ce(ce, M, w, denom=None):
    """L = mean over heads with denom_k > 0 of sum(w*CE*M)/denom_k; returns (dL/dCE, L)."""
    H = ce.shape[2]
    denom = M.sum(axis=(0, 1)) if denom is None else np.asarray(denom, np.float64)
    used = [k for k in range(H) if denom[k] > 0]
    coef = np.zeros_like(ce)
    for k in used:
        coef[:, :, k] = w[:, :, k] * M[:, :, k] / (denom[k] * len(used))
    return coef, float((coef * ce).sum())


def baseline(case):
    B, T, H, ce, M, m, *_ = unpack(case["batch"])
    c, loss = weighted_ce(ce, M, np.ones_like(ce))
    return c, None, loss


def rho1(case):
    B, T, H, ce, M, m, V, R, r, pairs = unpack(case["batch"])
    k_pct = case["config"].get("k_percent", 0.6)
    mode = case["config"].get("mode", "signed")
    w = np.zeros_like(ce)
    for k in range(H):
        Rk = np.zeros((B, T))
        Rk[:, : T - k] = R[:, k:]  # R_k[b,t] = R[b, t+k]
        e = {"signed": ce[:, :, k] - Rk, "absolute": np.abs(ce[:, :, k] - Rk), "difficult": Rk}[mode]
        valid = M[:, :, k] > 0
        if valid.sum() == 0:
            continue
        thr = np.quantile(e[valid], 1 - k_pct, method="linear")
        w[:, :, k] = (e >= thr) * M[:, :, k]
    if case["train"]:
        c, loss = weighted_ce(ce, M, w)
    else:
        c, loss = weighted_ce(ce, M, w, denom=w.sum(axis=(0, 1)))
    return c, None, loss


def last_target(m_row):
    idx = np.nonzero(m_row)[0]
    return None if len(idx) == 0 else int(idx[-1])


def value_regression(V, G, m, huber=None):
    """mean over sequences with targets of the masked mean of l(V-G); returns (L, dL/dV)."""
    seqs = [b for b in range(V.shape[0]) if m[b].sum() > 0]
    grad = np.zeros_like(V)
    loss = 0.0
    for b in seqs:
        n = m[b].sum()
        d = (V[b] - G[b]) * m[b]
        if huber is None:
            l, dl = d * d, 2 * d
        else:
            small = np.abs(d) < huber
            l = np.where(small, 0.5 * d * d / huber, np.abs(d) - 0.5 * huber)
            dl = np.where(small, d / huber, np.sign(d))
        loss += (l * m[b]).sum() / (n * len(seqs))
        grad[b] = dl * m[b] / (n * len(seqs))
    return loss, grad


def lambda_targets(V, m, r, gamma, lam):
    G = np.zeros_like(V)
    for b in range(V.shape[0]):
        last = last_target(m[b])
        if last is None:
            continue
        G[b, last] = r[b]
        for t in range(last - 1, -1, -1):
            G[b, t] = (1 - lam) * gamma * V[b, t + 1] + lam * gamma * G[b, t + 1]
    return G


def critic(case):
    B, T, H, ce, M, m, V, R, r, pairs = unpack(case["batch"])
    cfg = case["config"]
    kind = cfg.get("value_loss", {}).get("type", "mc_mse")
    vl = cfg.get("value_loss", {})
    huber = vl.get("huber_delta", 0.5) if vl.get("huber", False) else None
    if kind == "mc_mse":
        loss, grad = value_regression(V, np.repeat(r[:, None], T, axis=1), m, huber)
    elif kind == "lambda_return":
        lam = cfg.get("lambda", {}).get("start", 0.95) if case["train"] else 1.0
        G = lambda_targets(V, m, r, vl.get("gamma", 1.0), lam)
        loss, grad = value_regression(V, G, m, huber)
    else:
        coef = vl.get("pairwise_coef", 1.0)
        n = m.sum(axis=1) + 1e-8
        vbar = (V * m).sum(axis=1) / n
        plist = []
        for i in range(B):
            if pairs[i] < 0 or r[i] <= 0.5:
                continue
            js = [j for j in range(B) if j != i and pairs[j] == pairs[i] and r[j] <= 0.5]
            if js:
                plist.append((i, js[0]))
        grad = np.zeros_like(V)
        loss = 0.0
        for p, q in plist:
            d = vbar[p] - vbar[q]
            loss += coef * np.log1p(np.exp(-d)) / len(plist)
            g = -coef / (1 + np.exp(d)) / len(plist)
            grad[p] += g * m[p] / n[p]
            grad[q] -= g * m[q] / n[q]
    return np.zeros_like(ce), grad, float(loss)


def verifiable(case):
    B, T, H, ce, M, m, V, R, r, pairs = unpack(case["batch"])
    cfg = case["config"]
    g, lam, v0 = cfg.get("gamma", 1.0), cfg.get("td_lambda", 0.95), cfg.get("initial_value", 0.5)
    beta, lo, hi = cfg.get("beta", 1.0), cfg.get("w_min", 0.1), cfg.get("w_max", 3.0)
    ema_on = cfg.get("ema", {}).get("enabled", True)
    A = np.zeros((B, T))
    for b in range(B):
        last = last_target(m[b])
        if last is None:
            continue
        if cfg.get("advantage", "gae") == "mc":
            A[b, : last + 1] = r[b] - V[b, : last + 1]
            continue
        nxt = 0.0
        for t in range(last, -1, -1):
            prev = v0 if t == 0 else V[b, t - 1]
            nxt = g * V[b, t] - prev + g * lam * nxt
            A[b, t] = nxt
    A *= m
    valid = A[m > 0]
    if case["train"] and ema_on:
        mu, sigma, whiten = 0.0, 1.0, True  # a fresh plugin's EMA
    else:
        whiten = len(valid) > 1
        mu, sigma = (valid.mean(), valid.std(ddof=1)) if whiten else (0.0, 1.0)
    w = np.clip(np.exp((A - mu) / (sigma + 1e-8) / beta), lo, hi) * m if whiten else m.copy()
    wk = np.zeros_like(ce)
    for k in range(H):
        wk[:, : T - k - 1, k] = w[:, k + 1:]
    if cfg.get("normalize", "tokens") == "weights":
        c, loss = weighted_ce(ce, M, wk, denom=(wk * M).sum(axis=(0, 1)))
    else:
        c, loss = weighted_ce(ce, M, wk)
    vgrad = None
    coef = cfg.get("value_coef", 0.5)
    if coef > 0:
        vl, gr = value_regression(V, np.repeat(r[:, None], T, axis=1), m)
        loss += coef * vl
        vgrad = coef * gr
    return c, vgrad, float(loss)


def main():
    cases = json.load(open(sys.argv[1]))
    out = []
    for case in cases:
        c, v, loss = {"baseline": baseline, "rho1": rho1, "critic": critic, "verifiable": verifiable}[case["plugin"]](case)
        out.append({"ce": c.reshape(-1).tolist(), "values": None if v is None else v.reshape(-1).tolist(), "loss": loss})
    json.dump(out, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
