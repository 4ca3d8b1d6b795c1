locals {
  pops = {
    for name, pop in var.pops : name => {
      name          = name
      region        = pop.region
      instance_type = coalesce(pop.instance_type, var.default_instance_type)
      extra_tags    = distinct(concat(var.extra_tags, pop.extra_tags))
      shield        = pop.shield
    }
  }

  shields = sort([for name, pop in var.pops : name if pop.shield])

  regions = sort(distinct([for pop in values(var.pops) : pop.region]))
}
