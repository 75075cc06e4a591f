;; A component whose start function grows a table by 100 million elements (1.6 GB of host memory at 16
;; bytes an element) while its linear memory stays empty.
(component
  (core module $m
    (table $t 0 funcref)
    (func $grow (drop (table.grow $t (ref.null func) (i32.const 100000000))))
    (start $grow))
  (core instance (instantiate $m)))
