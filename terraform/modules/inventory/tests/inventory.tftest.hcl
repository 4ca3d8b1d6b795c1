variables {
  pops = {
    ord-1 = {
      region        = "us-ord"
      public_ipv4   = "198.51.100.20"
      public_ipv6   = "2001:db8::20"
      mesh_hostname = "edgecache-ord-1"
      fqdn          = "ord-1.pops.example.social"
    }
    fra-1 = {
      region        = "eu-central"
      public_ipv4   = "198.51.100.10"
      public_ipv6   = "2001:db8::10"
      mesh_hostname = "edgecache-fra-1"
      fqdn          = "fra-1.pops.example.social"
      shield        = true
    }
  }
}

run "renders_an_ansible_inventory" {
  command = plan

  assert {
    condition     = keys(yamldecode(output.yaml)) == ["all"] && keys(yamldecode(output.yaml).all.children) == ["edgecache_pops"]
    error_message = "the inventory must hold one group, edgecache_pops, under all"
  }

  assert {
    condition = yamldecode(output.yaml).all.children.edgecache_pops.hosts["fra-1"] == {
      ansible_host            = "198.51.100.10"
      ansible_user            = "root"
      edgecache_pop_name      = "fra-1"
      edgecache_region        = "eu-central"
      edgecache_mesh_hostname = "edgecache-fra-1"
      edgecache_public_fqdn   = "fra-1.pops.example.social"
      edgecache_public_ipv4   = "198.51.100.10"
      edgecache_public_ipv6   = "2001:db8::10"
      edgecache_shield        = true
    }
    error_message = "each host must carry the variables the Ansible roles read"
  }

  assert {
    condition     = yamldecode(output.yaml).all.children.edgecache_pops.hosts["ord-1"].edgecache_shield == false
    error_message = "a PoP not marked shield must be no shield"
  }

  assert {
    condition     = keys(yamldecode(output.yaml).all.children.edgecache_pops.hosts) == ["fra-1", "ord-1"]
    error_message = "every PoP must be a host of the group"
  }
}

run "lists_hosts_sorted_by_name" {
  command = plan

  assert {
    condition     = [for host in output.hosts : host.name] == ["fra-1", "ord-1"]
    error_message = "hosts must be sorted by PoP name"
  }

  assert {
    condition     = output.hosts[1].ansible_host == "198.51.100.20" && output.hosts[1].edgecache_region == "us-ord"
    error_message = "the list must carry the same variables as the YAML"
  }
}

run "can_connect_over_the_mesh" {
  command = plan

  variables {
    connect_via = "mesh"
    ssh_user    = "admin"
  }

  assert {
    condition     = yamldecode(output.yaml).all.children.edgecache_pops.hosts["ord-1"].ansible_host == "edgecache-ord-1"
    error_message = "with connect_via = mesh, ansible_host must be the mesh host name"
  }

  assert {
    condition     = alltrue([for host in output.hosts : host.ansible_user == "admin"])
    error_message = "ssh_user must reach every host"
  }
}

run "an_empty_fleet_is_an_empty_group" {
  command = plan

  variables {
    pops = {}
  }

  assert {
    condition     = length(output.hosts) == 0
    error_message = "no PoPs must give no hosts"
  }
}

run "rejects_a_bad_ipv4_address" {
  command = plan

  variables {
    pops = {
      fra-1 = {
        region        = "eu-central"
        public_ipv4   = "198.51.100.300"
        public_ipv6   = ""
        mesh_hostname = "edgecache-fra-1"
        fqdn          = "fra-1.pops.example.social"
      }
    }
  }

  expect_failures = [var.pops]
}

run "rejects_an_ipv6_address_with_a_prefix_length" {
  command = plan

  variables {
    pops = {
      fra-1 = {
        region        = "eu-central"
        public_ipv4   = "198.51.100.10"
        public_ipv6   = "2001:db8::10/128"
        mesh_hostname = "edgecache-fra-1"
        fqdn          = "fra-1.pops.example.social"
      }
    }
  }

  expect_failures = [var.pops]
}

run "rejects_an_unknown_connection_mode" {
  command = plan

  variables {
    connect_via = "vpn"
  }

  expect_failures = [var.connect_via]
}
