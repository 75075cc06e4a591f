;; A component whose core module's start function never returns: it runs during instantiation, before
;; any export is called (tests/hostile_plugins.rs: the wall-clock cap covers instantiation).
(component
  (core module $m
    (func $spin (loop $l (br $l)))
    (start $spin))
  (core instance (instantiate $m)))
