//! The `ec2` driver against moto's EC2 API, with credentials and SigV4
//! signatures checked (moto's IAM mode): create makes a key pair, a
//! security group and an instance, and provisions it — the instance's
//! private address is the SSH test host's, in a subnet made for it, so the
//! whole provisioning runs against a real sshd; ls, stop/start map to EC2;
//! rm leaves no resource behind, as boto3 sees it. Bad credentials are
//! refused with AWS's own error and a hint, and leave nothing.

use berth_tests::moto::Moto;
use berth_tests::sshd::SshHost;
use berth_tests::{require_root, Berth};

/// What the test made in moto before the driver's calls: an IAM user with
/// keys (so signatures are checked from then on), a VPC and a subnet.
struct Cloud {
    moto: Moto,
    key: String,
    secret: String,
    vpc: String,
    subnet: String,
    ami: String,
}

fn cloud(host: &SshHost) -> Cloud {
    // IAM calls are free until the user and its keys exist; then every
    // call must be signed with them.
    let moto = Moto::start(Some(3));
    let keys = moto.boto(
        "x",
        "x",
        "iam.create_user(UserName='berth')\n\
         iam.put_user_policy(UserName='berth', PolicyName='all', PolicyDocument=json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Action': '*', 'Resource': '*'}]}))\n\
         k = iam.create_access_key(UserName='berth')['AccessKey']\n\
         out = [k['AccessKeyId'], k['SecretAccessKey']]",
    );
    let key = keys[0].as_str().unwrap().to_owned();
    let secret = keys[1].as_str().unwrap().to_owned();
    let prefix = host.ip.rsplit_once('.').unwrap().0.to_owned();
    let made = moto.boto(
        &key,
        &secret,
        &format!(
            "vpc = ec2.create_vpc(CidrBlock='10.77.0.0/16')['Vpc']['VpcId']\n\
             sub = ec2.create_subnet(VpcId=vpc, CidrBlock='{prefix}.0/24')['Subnet']['SubnetId']\n\
             ami = ec2.describe_images()['Images'][0]['ImageId']\n\
             out = [vpc, sub, ami]"
        ),
    );
    Cloud {
        key,
        secret,
        vpc: made[0].as_str().unwrap().to_owned(),
        subnet: made[1].as_str().unwrap().to_owned(),
        ami: made[2].as_str().unwrap().to_owned(),
        moto,
    }
}

fn create_args(c: &Cloud, host: &SshHost, key: &str, secret: &str, name: &str) -> Vec<String> {
    [
        "create",
        "--driver",
        "ec2",
        "--amazonec2-endpoint",
        &c.moto.endpoint,
        "--amazonec2-region",
        "us-east-1",
        "--amazonec2-access-key",
        key,
        "--amazonec2-secret-key",
        secret,
        "--amazonec2-ami",
        &c.ami,
        "--amazonec2-vpc-id",
        &c.vpc,
        "--amazonec2-subnet-id",
        &c.subnet,
        "--amazonec2-private-ip",
        &host.ip,
        "--amazonec2-private-address-only",
        "--amazonec2-ssh-user",
        "root",
        "--amazonec2-ssh-keypath",
        host.key.to_str().unwrap(),
        name,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What is left in moto: key pairs, security groups other than the
/// default ones, and instances not terminated.
fn leftovers(c: &Cloud) -> serde_json::Value {
    c.moto.boto(
        &c.key,
        &c.secret,
        "keys = [k['KeyName'] for k in ec2.describe_key_pairs()['KeyPairs']]\n\
         groups = [g['GroupName'] for g in ec2.describe_security_groups()['SecurityGroups'] if g['GroupName'] != 'default']\n\
         live = [i['InstanceId'] for r in ec2.describe_instances()['Reservations'] for i in r['Instances'] if i['State']['Name'] != 'terminated']\n\
         out = keys + groups + live",
    )
}

#[test]
fn an_ec2_machine_is_made_provisioned_and_removed() {
    require_root();
    let host = SshHost::start();
    let c = cloud(&host);
    let berth = Berth::new();
    let args = create_args(&c, &host, &c.key, &c.secret, "cloudy");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    berth.ok(&args);
    // The instance is the SSH host: provisioned, its endpoint answers.
    assert!(host.path("/usr/local/bin/berth-agent").is_file());
    let ls = berth.ok(&[
        "ls",
        "--format",
        "{{.Name}} {{.DriverName}} {{.State}} {{.URL}}",
    ]);
    assert_eq!(
        ls.trim(),
        format!("cloudy ec2 Running tcp://{}:2376", host.ip),
        "{ls}"
    );
    let made = c.moto.boto(
        &c.key,
        &c.secret,
        "r = ec2.describe_instances()['Reservations'][0]['Instances'][0]\n\
         tags = {t['Key']: t['Value'] for t in r.get('Tags', [])}\n\
         out = [r['State']['Name'], r['PrivateIpAddress'], tags.get('Name'), len(ec2.describe_key_pairs()['KeyPairs'])]",
    );
    assert_eq!(made[0], "running");
    assert_eq!(made[1], host.ip.as_str());
    assert_eq!(made[2], "cloudy");
    assert_eq!(made[3], 1);
    assert_eq!(
        berth.ok(&["ssh", "cloudy", "--", "uname", "-s"]).trim(),
        "Linux"
    );

    // stop and start are EC2's.
    berth.ok(&["stop", "cloudy"]);
    assert_eq!(berth.ok(&["status", "cloudy"]).trim(), "Stopped");
    let state = c.moto.boto(
        &c.key,
        &c.secret,
        "out = ec2.describe_instances()['Reservations'][0]['Instances'][0]['State']['Name']",
    );
    assert_eq!(state, "stopped");
    berth.ok(&["start", "cloudy"]);
    assert_eq!(berth.ok(&["status", "cloudy"]).trim(), "Running");

    // rm: nothing left in the cloud, nothing here.
    berth.ok(&["rm", "-f", "cloudy"]);
    assert_eq!(leftovers(&c), serde_json::json!([]));
    assert!(!berth.machine_dir("cloudy").exists());
}

#[test]
fn cloud_errors_are_clear_and_leave_nothing() {
    require_root();
    let host = SshHost::start();
    let c = cloud(&host);
    let berth = Berth::new();
    // Credentials AWS does not know.
    let args = create_args(&c, &host, "AKIAWRONG", "wrong", "denied");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = berth.run(&args);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("AuthFailure"), "{said}");
    assert!(said.contains("check the access key"), "{said}");
    assert!(!berth.machine_dir("denied").exists());
    // Right key, wrong secret: the signature does not check out.
    let args = create_args(&c, &host, &c.key, "not-the-secret", "forged");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = berth.run(&args);
    assert!(!out.status.success());
    assert!(!berth.machine_dir("forged").exists());
    // A failure after resources were made: the instance cannot be reached
    // (no sshd at that address), so create undoes all it made.
    let mut args = create_args(&c, &host, &c.key, &c.secret, "unreachable");
    let at = args
        .iter()
        .position(|a| a == "--amazonec2-private-ip")
        .unwrap();
    args[at + 1] = host.ip.replace(".2", ".9");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = berth
        .command(&args)
        .env("BERTH_EC2_SSH_TIMEOUT", "5")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!berth.machine_dir("unreachable").exists());
    assert_eq!(leftovers(&c), serde_json::json!([]));
    // An AMI the region does not have: refused before anything is made.
    let mut args = create_args(&c, &host, &c.key, &c.secret, "noimage");
    let at = args.iter().position(|a| a == "--amazonec2-ami").unwrap();
    args[at + 1] = "ami-0000000000000dead".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = berth.run(&args);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("InvalidAMIID"), "{said}");
    assert!(!berth.machine_dir("noimage").exists());
    assert_eq!(leftovers(&c), serde_json::json!([]));
    // No AMI: refused before anything is made.
    let out = berth.run(&["create", "--driver", "ec2", "noami"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--amazonec2-ami"));
}
