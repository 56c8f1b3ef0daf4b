# total the amount column per category
{ total[$1] += $2 }
END { for (c in total) print c, total[c] }
